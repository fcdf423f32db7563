//! Requests per minute, tokens per minute and requests in flight, per key, counted in
//! shared data so that the limit holds for one Envoy whatever its worker count.
//!
//! Each limited key has one entry, `kg:r:{key id}`, created by the first request that
//! needs it (so only keys in use cost memory). It holds a ring of 2-second slots with the
//! requests admitted and the tokens used in each, and the requests in flight:
//!
//! - a request is counted in the slot of the moment it is admitted; it is refused when
//!   the slots hold `rpm` requests already;
//! - the tokens of a response are counted in the slot of the moment it ends (the filter
//!   reads them from the response); a key whose slots hold `tpm` tokens or more is refused
//!   from its next request on;
//! - the ring has 31 slots, the current one and the 30 before it, so a request counts
//!   for between 60 and 62 seconds. No 60-second span ever admits more than `rpm`
//!   requests; the price is that a key kept at its limit gets up to 1/31 (3.2%) less
//!   than `rpm`, since each request counts up to 2 s longer than a minute.
//!
//! Every change is a compare-and-swap retried on a lost race. Shared data cannot create an
//! entry only if it is absent: if the first requests of a key reach two workers at the
//! same instant, both may create its entry and one count is lost, at most once per key
//! and worker for the life of the Envoy.

use crate::kv::{self, HostError, SharedData};

/// The limits of one key, as enforced by one Envoy; `None` = no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub max_parallel: Option<u64>,
}

impl Limits {
    /// The stricter of the key's own limits and its group's (`group_rpm`, `group_tpm`),
    /// each shared out among `replicas` Envoys (at least 1 each).
    pub fn effective(
        key: Limits,
        group_rpm: Option<u64>,
        group_tpm: Option<u64>,
        replicas: u64,
    ) -> Limits {
        let stricter = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let share = |limit: Option<u64>| limit.map(|l| (l / replicas.max(1)).max(1));
        Limits {
            rpm: share(stricter(key.rpm, group_rpm)),
            tpm: share(stricter(key.tpm, group_tpm)),
            max_parallel: share(key.max_parallel),
        }
    }

    pub fn any(&self) -> bool {
        self.rpm.is_some() || self.tpm.is_some() || self.max_parallel.is_some()
    }

    /// Whether the end of an admitted request changes the entry (tokens to count or a
    /// request in flight to let go).
    pub fn counts_the_end(&self) -> bool {
        self.tpm.is_some() || self.max_parallel.is_some()
    }
}

/// The shared-data entry of a key's windows.
pub fn entry_name(key_id: &str) -> String {
    format!("kg:r:{key_id}")
}

const SLOT_MS: u64 = 2_000;
/// A key with no request admitted or ended for this many slots (10 minutes) has nothing in
/// flight: a count its end never took back (a VM that failed mid-request) is forgotten
/// then, rather than keeping the key below its `max_parallel` until Envoy restarts.
const IDLE_SLOTS: u64 = 300;
/// The current slot and the 30 before it.
const SLOTS: usize = 31;
const ENCODED_LEN: usize = 8 + 4 + SLOTS * 8;

/// The shares' words after the windows: three of (granted, until, kept).
const SHARES_LEN: usize = 3 * 3 * 8;

/// With credit leases: this Envoy's share of one of the key's limits, as the leader last
/// wrote it from the key-service's answer (`limits::credit`), kept here so that a
/// request reads it with the windows, in the same compare-and-swap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Share {
    pub granted: u64,
    /// When it runs out (Unix ms).
    pub until_ms: u64,
    /// The last ask failed: the share stands until an answer comes.
    pub kept: bool,
}

impl Share {
    /// What of the limit `full` this Envoy may use at `now_ms`.
    pub fn of(&self, full: u64, now_ms: u64) -> u64 {
        if now_ms < self.until_ms || self.kept {
            self.granted.min(full)
        } else {
            0
        }
    }
}

/// Which limit a share is of, as `Window::shares` orders them.
pub const REQUESTS: usize = 0;
pub const TOKENS: usize = 1;
pub const IN_FLIGHT: usize = 2;

/// What the entry holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// Index (Unix milliseconds / `SLOT_MS`) of the newest slot; slot `i` lives at
    /// `i % SLOTS` in the arrays.
    newest: u64,
    in_flight: u32,
    requests: [u32; SLOTS],
    tokens: [u32; SLOTS],
    /// Shares of the RPM, TPM and `max_parallel` limits (`REQUESTS`, `TOKENS`,
    /// `IN_FLIGHT`).
    pub shares: [Share; 3],
}

impl Default for Window {
    fn default() -> Self {
        Window {
            newest: 0,
            in_flight: 0,
            requests: [0; SLOTS],
            tokens: [0; SLOTS],
            shares: [Share::default(); 3],
        }
    }
}

/// How the key stands after a request was admitted (what the `x-ratelimit-*` headers
/// tell), or how long until it would be admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    pub remaining_requests: u64,
    pub remaining_tokens: u64,
    /// Whole seconds until the window admits again (at least 1); 0 when admitted.
    pub retry_after_s: u64,
}

fn slot(index: u64) -> usize {
    (index % SLOTS as u64) as usize
}

impl Window {
    pub fn decode(all: &[u8]) -> Window {
        let Some(bytes) = all.get(..ENCODED_LEN) else {
            return Window::default();
        };
        let u32_at = |at: usize| {
            let mut b = [0; 4];
            b.copy_from_slice(&bytes[at..at + 4]);
            u32::from_le_bytes(b)
        };
        let mut newest = [0; 8];
        newest.copy_from_slice(&bytes[..8]);
        let mut w = Window {
            newest: u64::from_le_bytes(newest),
            in_flight: u32_at(8),
            ..Window::default()
        };
        for i in 0..SLOTS {
            w.requests[i] = u32_at(12 + i * 4);
            w.tokens[i] = u32_at(12 + SLOTS * 4 + i * 4);
        }
        // (A window written by an older filter has no shares.)
        if let Some(words) = all.get(ENCODED_LEN..ENCODED_LEN + SHARES_LEN) {
            let word = |i: usize| {
                let mut b = [0; 8];
                b.copy_from_slice(&words[i * 8..i * 8 + 8]);
                u64::from_le_bytes(b)
            };
            for (i, share) in w.shares.iter_mut().enumerate() {
                *share = Share {
                    granted: word(i * 3),
                    until_ms: word(i * 3 + 1),
                    kept: word(i * 3 + 2) != 0,
                };
            }
        }
        w
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ENCODED_LEN + SHARES_LEN);
        out.extend_from_slice(&self.newest.to_le_bytes());
        out.extend_from_slice(&self.in_flight.to_le_bytes());
        for n in self.requests.iter().chain(&self.tokens) {
            out.extend_from_slice(&n.to_le_bytes());
        }
        for share in &self.shares {
            for word in [share.granted, share.until_ms, u64::from(share.kept)] {
                out.extend_from_slice(&word.to_le_bytes());
            }
        }
        out
    }

    /// What the window counts at its newest slot: requests and tokens in the last minute,
    /// and requests in flight (`REQUESTS`, `TOKENS`, `IN_FLIGHT`).
    pub fn levels(&self) -> [u64; 3] {
        [
            Self::total(&self.requests),
            Self::total(&self.tokens),
            u64::from(self.in_flight),
        ]
    }

    /// `limits` held to this Envoy's shares of them at `now_ms`.
    pub fn shared(&self, limits: Limits, now_ms: u64) -> Limits {
        let of = |limit: Option<u64>, share: &Share| limit.map(|full| share.of(full, now_ms));
        Limits {
            rpm: of(limits.rpm, &self.shares[REQUESTS]),
            tpm: of(limits.tpm, &self.shares[TOKENS]),
            max_parallel: of(limits.max_parallel, &self.shares[IN_FLIGHT]),
        }
    }

    /// Moves the ring to the slot of `now_ms`, emptying the slots it passes. A clock
    /// behind the newest slot (another worker moved it a moment ago) counts in it.
    fn advance(&mut self, now_ms: u64) {
        let current = now_ms / SLOT_MS;
        if self.newest > current.saturating_add(SLOTS as u64) {
            // The clock stepped back by more than the window: start again from now rather
            // than keep counting until the clock catches up.
            self.requests = [0; SLOTS];
            self.tokens = [0; SLOTS];
            self.newest = current;
            return;
        }
        if current <= self.newest {
            return;
        }
        if current - self.newest > IDLE_SLOTS {
            self.in_flight = 0;
        }
        let passed = (current - self.newest).min(SLOTS as u64);
        for index in current + 1 - passed..=current {
            self.requests[slot(index)] = 0;
            self.tokens[slot(index)] = 0;
        }
        self.newest = current;
    }

    fn total(counts: &[u32; SLOTS]) -> u64 {
        counts.iter().map(|&n| u64::from(n)).sum()
    }

    /// Milliseconds from `now_ms` until `fits(what still counts)` holds, as the oldest
    /// slots leave the window.
    fn wait_ms(&self, counts: &[u32; SLOTS], now_ms: u64, fits: impl Fn(u64) -> bool) -> u64 {
        let mut left = Self::total(counts);
        let oldest = self.newest.saturating_sub(SLOTS as u64 - 1);
        for index in oldest..=self.newest {
            left -= u64::from(counts[slot(index)]);
            if fits(left) {
                // Slot `index` stops counting when slot `index + SLOTS` begins.
                return ((index + SLOTS as u64) * SLOT_MS).saturating_sub(now_ms);
            }
        }
        SLOT_MS
    }

    /// Admits a request at `now_ms` under `limits`, counting it, or says how long until
    /// one would be admitted (the window is then left as it was, apart from time).
    pub fn admit(&mut self, limits: Limits, now_ms: u64) -> Result<Standing, Standing> {
        self.advance(now_ms);
        let requests = Self::total(&self.requests);
        let tokens = Self::total(&self.tokens);
        let standing = |retry_ms: u64, extra: u64| Standing {
            remaining_requests: limits
                .rpm
                .map_or(0, |rpm| rpm.saturating_sub(requests + extra)),
            remaining_tokens: limits.tpm.map_or(0, |tpm| tpm.saturating_sub(tokens)),
            retry_after_s: retry_ms.div_ceil(1_000).max(u64::from(retry_ms > 0)),
        };
        let mut wait = 0;
        if let Some(rpm) = limits.rpm.filter(|&rpm| requests >= rpm) {
            wait = wait.max(self.wait_ms(&self.requests, now_ms, |left| left < rpm));
        }
        if let Some(tpm) = limits.tpm.filter(|&tpm| tokens >= tpm) {
            wait = wait.max(self.wait_ms(&self.tokens, now_ms, |left| left < tpm));
        }
        if limits
            .max_parallel
            .is_some_and(|max| u64::from(self.in_flight) >= max)
        {
            // Nothing tells when a request in flight will end: try again in a second.
            wait = wait.max(1_000);
        }
        if wait > 0 {
            return Err(standing(wait, 0));
        }
        let current = slot(self.newest);
        self.requests[current] = self.requests[current].saturating_add(1);
        if limits.max_parallel.is_some() {
            self.in_flight = self.in_flight.saturating_add(1);
        }
        Ok(standing(0, 1))
    }

    /// A request admitted under limits with `max_parallel` (`was_in_flight`) or `tpm`
    /// ended at `now_ms` having used `tokens`.
    pub fn end(&mut self, now_ms: u64, tokens: u64, was_in_flight: bool) {
        self.advance(now_ms);
        let current = slot(self.newest);
        let tokens = u32::try_from(tokens).unwrap_or(u32::MAX);
        self.tokens[current] = self.tokens[current].saturating_add(tokens);
        if was_in_flight {
            self.in_flight = self.in_flight.saturating_sub(1);
        }
    }
}

impl kv::Cell for Window {
    fn decode(bytes: &[u8]) -> Self {
        Window::decode(bytes)
    }

    fn encode(&self) -> Vec<u8> {
        Window::encode(self)
    }
}

/// The headers that tell a client how its key stands: OpenAI's `x-ratelimit-*` for each
/// limit the key has, and `retry-after` on a refusal.
pub fn headers(limits: &Limits, standing: &Standing) -> Vec<(&'static str, String)> {
    let mut out = Vec::with_capacity(5);
    if let Some(rpm) = limits.rpm {
        out.push(("x-ratelimit-limit-requests", rpm.to_string()));
        out.push((
            "x-ratelimit-remaining-requests",
            standing.remaining_requests.to_string(),
        ));
    }
    if let Some(tpm) = limits.tpm {
        out.push(("x-ratelimit-limit-tokens", tpm.to_string()));
        out.push((
            "x-ratelimit-remaining-tokens",
            standing.remaining_tokens.to_string(),
        ));
    }
    if standing.retry_after_s > 0 {
        out.push(("retry-after", standing.retry_after_s.to_string()));
    }
    out
}

/// What `admit` decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// Counted, or refused with how long to wait.
    pub result: Result<Standing, Standing>,
    /// The limits it was held to: the key's, or (`shared`) this Envoy's shares of them.
    pub held_to: Limits,
    /// On a refusal, what the window counts (`Window::levels`).
    pub levels: [u64; 3],
}

/// Admits a request of the key whose windows are in `name`, held to this Envoy's shares
/// of `limits` when `shared` (credit leases).
pub fn admit(
    shared: &impl SharedData,
    name: &str,
    limits: Limits,
    now_ms: u64,
    shares: bool,
) -> Result<Admission, HostError> {
    let mut refused = None;
    let mut held_to = limits;
    let admitted = kv::update(shared, name, |w: &mut Window| {
        held_to = if shares {
            w.shared(limits, now_ms)
        } else {
            limits
        };
        match w.admit(held_to, now_ms) {
            Ok(standing) => Some(standing),
            Err(standing) => {
                refused = Some((standing, w.levels()));
                None
            }
        }
    })?;
    let (result, levels) = match (admitted, refused) {
        (Some(standing), _) => (Ok(standing), [0; 3]),
        (None, Some((standing, levels))) => (Err(standing), levels),
        (None, None) => {
            let standing = Standing {
                remaining_requests: 0,
                remaining_tokens: 0,
                retry_after_s: 1,
            };
            (Err(standing), [0; 3])
        }
    };
    Ok(Admission {
        result,
        held_to,
        levels,
    })
}

/// The leader writes this Envoy's share `which` (`REQUESTS`, `TOKENS`, `IN_FLIGHT`) of
/// the key whose windows are in `name`.
pub fn set_share(
    shared: &impl SharedData,
    name: &str,
    which: usize,
    share: Share,
) -> Result<(), HostError> {
    kv::update(shared, name, |w: &mut Window| {
        *w.shares.get_mut(which)? = share;
        Some(())
    })?;
    Ok(())
}

/// The share `which` of the key whose windows are in `name`.
pub fn share(shared: &impl SharedData, name: &str, which: usize) -> Result<Share, HostError> {
    Ok(match shared.get(name)? {
        Some((bytes, _)) => Window::decode(&bytes)
            .shares
            .get(which)
            .copied()
            .unwrap_or_default(),
        None => Share::default(),
    })
}

/// What the key's window in `name` counts at `now_ms` (`Window::levels`).
pub fn levels(shared: &impl SharedData, name: &str, now_ms: u64) -> Result<[u64; 3], HostError> {
    let mut w = match shared.get(name)? {
        Some((bytes, _)) => Window::decode(&bytes),
        None => return Ok([0; 3]),
    };
    w.advance(now_ms);
    Ok(w.levels())
}

/// An admitted request of the key in `name` ended having used `tokens`.
pub fn end(
    shared: &impl SharedData,
    name: &str,
    now_ms: u64,
    tokens: u64,
    was_in_flight: bool,
) -> Result<(), HostError> {
    kv::update(shared, name, |w: &mut Window| {
        w.end(now_ms, tokens, was_in_flight);
        Some(())
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::testing::MemShared;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    /// A moment at the start of a slot, far from the epoch.
    const T0: u64 = 1_800_000_000_000;
    const NAME: &str = "kg:r:key_1";

    fn rpm(n: u64) -> Limits {
        Limits {
            rpm: Some(n),
            ..Limits::default()
        }
    }

    #[test]
    fn the_stricter_limit_wins_and_replicas_share_it() {
        let key = Limits {
            rpm: Some(100),
            tpm: None,
            max_parallel: Some(3),
        };
        let l = Limits::effective(key, Some(60), Some(10_000), 1);
        assert_eq!(
            (l.rpm, l.tpm, l.max_parallel),
            (Some(60), Some(10_000), Some(3))
        );
        let l = Limits::effective(key, Some(600), None, 4);
        assert_eq!((l.rpm, l.tpm, l.max_parallel), (Some(25), None, Some(1)));
        // A replica's share never drops to nothing.
        assert_eq!(Limits::effective(rpm(2), None, None, 5).rpm, Some(1));
        assert!(!Limits::effective(Limits::default(), None, None, 3).any());
    }

    #[test]
    fn requests_stop_at_the_limit_until_the_oldest_leave_the_window() {
        let mut w = Window::default();
        // 3 at 0 s, 2 at 30 s: a limit of 5.
        for _ in 0..3 {
            w.admit(rpm(5), T0).unwrap();
        }
        let last = [w.admit(rpm(5), T0 + 30_000), w.admit(rpm(5), T0 + 30_500)];
        assert_eq!(last.map(|s| s.unwrap().remaining_requests), [1, 0]);
        let refused = w.admit(rpm(5), T0 + 59_000).unwrap_err();
        // The three of 0 s count until the slot of 62 s begins: 3 s from 59 s.
        assert_eq!(refused.retry_after_s, 3);
        assert_eq!(refused.remaining_requests, 0);
        // Still refused a moment before, admitted at the moment it says.
        assert!(w.admit(rpm(5), T0 + 61_999).is_err());
        let s = w.admit(rpm(5), T0 + 62_000).unwrap();
        assert_eq!(s.remaining_requests, 2, "the 2 of 30 s and this one count");
    }

    #[test]
    fn no_sixty_second_span_admits_more_than_the_limit() {
        // A request every 100 ms against 50 rpm, for 5 minutes of fake time.
        let mut w = Window::default();
        let mut admitted = Vec::new();
        for step in 0..3_000u64 {
            let now = T0 + 777 + step * 100;
            if w.admit(rpm(50), now).is_ok() {
                admitted.push(now);
            }
        }
        for (i, &start) in admitted.iter().enumerate() {
            let within = admitted[i..]
                .iter()
                .take_while(|&&t| t < start + 60_000)
                .count();
            assert!(within <= 50, "{within} admitted in the minute from {start}");
        }
        // And it is not much stricter than asked: at least 50 a minute less 1/31, over 5.
        assert!(admitted.len() >= 5 * 48, "{} admitted", admitted.len());
    }

    #[test]
    fn a_waiting_time_never_admits_too_early() {
        // Whatever the pattern, a refused request retried after `retry_after_s` is let in,
        // and one retried a second earlier is not.
        let mut w = Window::default();
        let mut now = T0 + 1_234;
        let mut refusals = 0;
        for i in 0..500u64 {
            now += (i * 7_919) % 4_001;
            if let Err(s) = w.admit(rpm(20), now) {
                refusals += 1;
                let mut probe = w.clone();
                let at = now + s.retry_after_s * 1_000;
                if s.retry_after_s > 1 {
                    assert!(probe.clone().admit(rpm(20), at - 1_000).is_err());
                }
                assert!(probe.admit(rpm(20), at).is_ok(), "after {s:?}");
            }
        }
        assert!(refusals > 50, "{refusals} refusals");
    }

    #[test]
    fn tokens_count_when_the_response_ends_and_refuse_the_next_request() {
        let limits = Limits {
            tpm: Some(1_000),
            ..Limits::default()
        };
        let mut w = Window::default();
        let s = w.admit(limits, T0).unwrap();
        assert_eq!(s.remaining_tokens, 1_000);
        // A long answer ends at 10 s having used 1,500 tokens: over the limit.
        w.end(T0 + 10_000, 1_500, false);
        let refused = w.admit(limits, T0 + 11_000).unwrap_err();
        assert_eq!(refused.remaining_tokens, 0);
        // The slot of 10 s leaves when the one of 72 s begins.
        assert_eq!(refused.retry_after_s, 61);
        assert!(w.admit(limits, T0 + 72_000).is_ok());
    }

    #[test]
    fn requests_in_flight_are_capped_and_released_when_they_end() {
        let limits = Limits {
            max_parallel: Some(2),
            ..Limits::default()
        };
        let mut w = Window::default();
        w.admit(limits, T0).unwrap();
        w.admit(limits, T0).unwrap();
        assert_eq!(w.admit(limits, T0).unwrap_err().retry_after_s, 1);
        w.end(T0 + 5, 0, true);
        assert!(w.admit(limits, T0 + 6).is_ok());
    }

    #[test]
    fn headers_tell_each_limit_the_key_has() {
        let s = Standing {
            remaining_requests: 4,
            remaining_tokens: 900,
            retry_after_s: 0,
        };
        let names = |l: Limits, s: &Standing| -> Vec<String> {
            headers(&l, s)
                .into_iter()
                .map(|(n, v)| format!("{n}={v}"))
                .collect()
        };
        assert_eq!(
            names(rpm(5), &s),
            [
                "x-ratelimit-limit-requests=5",
                "x-ratelimit-remaining-requests=4"
            ]
        );
        let both = Limits {
            tpm: Some(1_000),
            ..rpm(5)
        };
        let refused = Standing {
            retry_after_s: 7,
            ..s
        };
        assert_eq!(
            names(both, &refused),
            [
                "x-ratelimit-limit-requests=5",
                "x-ratelimit-remaining-requests=4",
                "x-ratelimit-limit-tokens=1000",
                "x-ratelimit-remaining-tokens=900",
                "retry-after=7"
            ]
        );
        let parallel = Limits {
            max_parallel: Some(1),
            ..Limits::default()
        };
        assert_eq!(names(parallel, &refused), ["retry-after=7"]);
    }

    #[test]
    fn a_count_in_flight_that_never_ended_is_forgotten_after_ten_idle_minutes() {
        let limits = Limits {
            max_parallel: Some(1),
            ..Limits::default()
        };
        let shared = MemShared::default();
        let try_at = |ms| {
            admit(&shared, NAME, limits, T0 + ms, false)
                .unwrap()
                .result
                .is_ok()
        };
        assert!(try_at(0));
        // Its end never comes (the VM failed): refused (refusals change nothing)...
        assert!(!try_at(9 * 60_000));
        assert!(!try_at(10 * 60_000));
        // ...and admitted once nothing was admitted or ended for more than 10 minutes.
        assert!(try_at(10 * 60_000 + 2_000));
        // Then counted again as usual.
        assert!(!try_at(10 * 60_000 + 3_000));
    }

    #[test]
    fn a_clock_stepped_back_starts_the_window_again() {
        let mut w = Window::default();
        for _ in 0..5 {
            w.admit(rpm(5), T0).unwrap();
        }
        // A small step back still counts in the newest slot.
        assert!(w.admit(rpm(5), T0 - 1_000).is_err());
        // A step back by more than the window forgets it.
        assert!(w.admit(rpm(5), T0 - 3_600_000).is_ok());
    }

    #[test]
    fn a_long_silence_empties_the_window() {
        let mut w = Window::default();
        for _ in 0..5 {
            w.admit(rpm(5), T0).unwrap();
        }
        w.end(T0, 9_999, false);
        assert!(w.admit(rpm(5), T0 + 3_600_000).is_ok());
        assert_eq!(Window::total(&w.requests), 1);
        assert_eq!(Window::total(&w.tokens), 0);
    }

    #[test]
    fn windows_round_trip_and_garbage_reads_as_empty() {
        let mut w = Window::default();
        w.admit(
            Limits {
                max_parallel: Some(9),
                ..rpm(9)
            },
            T0,
        )
        .unwrap();
        w.end(T0 + 4_000, u64::MAX, false);
        w.shares[TOKENS] = Share {
            granted: 7,
            until_ms: T0,
            kept: true,
        };
        let bytes = w.encode();
        assert_eq!(bytes.len(), ENCODED_LEN + SHARES_LEN);
        assert_eq!(Window::decode(&bytes), w);
        assert_eq!(Window::decode(b"short"), Window::default());
        // An older filter's window (no shares) reads with none.
        let old = Window::decode(&bytes[..ENCODED_LEN]);
        assert_eq!(
            (old.levels(), old.shares),
            (w.levels(), [Share::default(); 3])
        );
    }

    #[test]
    fn shares_hold_a_window_to_them_until_they_run_out_unless_kept() {
        let shared = MemShared::default();
        let limits = Limits {
            tpm: Some(100),
            ..rpm(10)
        };
        let share = |granted, kept| Share {
            granted,
            until_ms: T0 + 1_000,
            kept,
        };
        set_share(&shared, NAME, REQUESTS, share(2, false)).unwrap();
        let admit_at = |ms| admit(&shared, NAME, limits, T0 + ms, true).unwrap();
        // No TPM share: held to 0 tokens, refused at once.
        let refused = admit_at(0);
        assert_eq!(refused.held_to.tpm, Some(0));
        assert!(refused.result.is_err());
        set_share(&shared, NAME, TOKENS, share(50, false)).unwrap();
        assert!(admit_at(0).result.is_ok());
        assert!(admit_at(1).result.is_ok());
        let full = admit_at(2);
        assert_eq!((full.held_to.rpm, full.levels), (Some(2), [2, 0, 0]));
        assert!(full.result.is_err());
        // Run out: nothing; kept (the key-service cannot be asked): as it was.
        assert_eq!(admit_at(1_000).held_to.rpm, Some(0));
        set_share(&shared, NAME, REQUESTS, share(3, true)).unwrap();
        assert_eq!(admit_at(1_000).held_to.rpm, Some(3));
        // A share beyond the limit is the limit.
        set_share(&shared, NAME, REQUESTS, share(30, false)).unwrap();
        assert_eq!(admit_at(10).held_to.rpm, Some(10));
        assert_eq!(super::share(&shared, NAME, REQUESTS).unwrap().granted, 30);
    }

    #[test]
    fn workers_share_one_count_through_shared_data() {
        let shared = MemShared::default();
        // Two "workers" taking turns: one count, one limit.
        for i in 0..10 {
            assert!(admit(&shared, NAME, rpm(10), T0 + i, false)
                .unwrap()
                .result
                .is_ok());
        }
        let refused = admit(&shared, NAME, rpm(10), T0 + 10, false)
            .unwrap()
            .result
            .unwrap_err();
        assert!(refused.retry_after_s >= 60);
        let tpm = Limits {
            tpm: Some(100),
            ..Limits::default()
        };
        end(&shared, "kg:r:key_2", T0, 100, false).unwrap();
        assert!(admit(&shared, "kg:r:key_2", tpm, T0 + 1, false)
            .unwrap()
            .result
            .is_err());
    }
}
