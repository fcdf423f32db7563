//! Quota that cannot be raced. The snapshot tells each key's remaining quota and each
//! account's balance as the key-service last billed them; what it cannot know is what
//! requests in flight will cost, and what finished requests cost before their usage
//! reached the key-service and came back in a snapshot. Each key and each limited account
//! has a ledger of that in shared data, so every worker VM of one Envoy sees it:
//!
//! - `reserved`: estimates of requests in flight, taken when a request is admitted and
//!   given back when its response ends (however it ends);
//! - `unreported`: what finished requests cost, until the key-service has their usage;
//! - `landing`: what the key-service has accepted, each amount with the snapshot version
//!   from which remaining quotas and balances include it; counted until the VM's snapshot
//!   reaches that version.
//!
//! A request is admitted only if the limit minus all of that covers its estimate. With
//! credit leases on (`limits::credit`), it must also fit in this Envoy's lease: what the
//! key-service granted this Envoy (`granted`) minus what its requests spent (`spent`,
//! which only grows) and hold (`reserved`), before the lease runs out. Every
//! change is a compare-and-swap on the ledger's entry, retried on a lost race. The leader
//! creates a ledger when it stores a limited key or account, before the request path can
//! see it, because shared data cannot create an entry only if it is absent.

use crate::kv::{self, Cell, HostError, SharedData};
use crate::sync::snapshot::CapUnit;
use crate::usage::pricing::{self, Price, Tokens};

/// The shared-data entry of a key's ledger.
pub fn key_entry(key_id: &str) -> String {
    format!("kg:q:k:{key_id}")
}

/// The shared-data entry of the ledger of a key's cap on the models `model` (a name or
/// pattern) covers, counting `unit`: a cap whose unit changes starts a ledger (and a
/// lease) of its own, never counting tokens and credits in one.
pub fn cap_entry(key_id: &str, unit: CapUnit, model: &str) -> String {
    format!("kg:q:{}", cap_subject(key_id, unit.as_str(), model))
}

/// The lease subject of a key's cap (`m:<key id>:<unit>:<model>`, `unit` being `credits`
/// or `tokens`): what the filter asks for and the key-service bills, so one function
/// writes it for both.
pub fn cap_subject(key_id: &str, unit: &str, model: &str) -> String {
    format!("m:{key_id}:{unit}:{model}")
}

/// The shared-data entry of an account's ledger.
pub fn account_entry(account: &str) -> String {
    format!("kg:q:a:{account}")
}

const WORDS: usize = 15;

/// `Ledger::flags`: the ledger is in the list the leader renews leases from.
pub const LISTED: u64 = 1;
/// `Ledger::flags`: the last ask for a lease failed (the key-service was not reached).
pub const ASK_FAILED: u64 = 2;
/// `Ledger::flags`: the last answer granted less than the waiting requests needed (the
/// key has no more to give).
pub const SHORT: u64 = 4;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Ledger {
    pub reserved: u64,
    pub unreported: u64,
    /// `(version, amount)`; `(0, 0)` is a free slot.
    pub landing: [(u64, u64); 2],
    /// Credit leases: what settled requests cost in all (less usage that will never be
    /// billed).
    pub spent: u64,
    /// Credit leases: what this Envoy may have spent in all (`spent` + `reserved`).
    pub granted: u64,
    /// Credit leases: when the lease runs out (Unix ms); 0: no lease.
    pub lease_until_ms: u64,
    /// Credit leases: estimates of the requests waiting for a larger lease, summed.
    pub need: u64,
    /// Credit leases: asks for a lease sent for this ledger, and answers (or failures)
    /// to them.
    pub asked: u64,
    pub answered: u64,
    /// `LISTED`, `ASK_FAILED`.
    pub flags: u64,
    /// Credit leases: when the last ask was sent (Unix ms), and `committed()` then: how
    /// fast the key spends, to size the next lease.
    pub ask_ms: u64,
    pub ask_committed: u64,
}

/// What `reserve` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reserve {
    Admitted,
    /// The limit (as the snapshot has it, less what is pending) does not cover it.
    OverLimit,
    /// This Envoy's lease does not cover it: it waits for the answer to ask number `ask`.
    /// `list`: the ledger was not in the leader's list yet (the caller adds it); `wake`:
    /// no request was waiting before this one (the caller tells the leader).
    NeedLease {
        ask: u64,
        list: bool,
        wake: bool,
    },
    /// (`Lease::Answered`) The answer granted less than the waiting requests needed.
    LeaseShort,
    /// (`Lease::Answered`) The ask failed: the key-service could not be reached.
    LeaseFailed,
}

impl Ledger {
    /// Words missing at the end (a ledger written by an older filter) read as 0.
    pub fn decode(bytes: &[u8]) -> Ledger {
        if bytes.len() < 48 {
            return Ledger::default();
        }
        let word = |i: usize| {
            let mut b = [0; 8];
            match bytes.get(i * 8..i * 8 + 8) {
                Some(w) => b.copy_from_slice(w),
                None => return 0,
            }
            u64::from_le_bytes(b)
        };
        Ledger {
            reserved: word(0),
            unreported: word(1),
            landing: [(word(2), word(3)), (word(4), word(5))],
            spent: word(6),
            granted: word(7),
            lease_until_ms: word(8),
            need: word(9),
            asked: word(10),
            answered: word(11),
            flags: word(12),
            ask_ms: word(13),
            ask_committed: word(14),
        }
    }

    pub fn encode(&self) -> [u8; WORDS * 8] {
        let words = [
            self.reserved,
            self.unreported,
            self.landing[0].0,
            self.landing[0].1,
            self.landing[1].0,
            self.landing[1].1,
            self.spent,
            self.granted,
            self.lease_until_ms,
            self.need,
            self.asked,
            self.answered,
            self.flags,
            self.ask_ms,
            self.ask_committed,
        ];
        let mut out = [0; WORDS * 8];
        for (i, word) in words.iter().enumerate() {
            out[i * 8..i * 8 + 8].copy_from_slice(&word.to_le_bytes());
        }
        out
    }

    /// Credit leases: what this Envoy has spent or holds (what the key-service is told).
    pub fn committed(&self) -> u64 {
        self.spent.saturating_add(self.reserved)
    }

    /// Credit leases: whether the lease covers `amount` more at `now_ms`.
    pub fn lease_covers(&self, amount: u64, now_ms: u64) -> bool {
        now_ms < self.lease_until_ms && self.committed().saturating_add(amount) <= self.granted
    }

    /// What a snapshot at `version` does not show yet.
    pub fn pending(&self, version: u64) -> u64 {
        let landing = self
            .landing
            .iter()
            .filter(|(at, _)| *at > version)
            .fold(0u64, |sum, (_, amount)| sum.saturating_add(*amount));
        self.reserved
            .saturating_add(self.unreported)
            .saturating_add(landing)
    }

    /// Moves `amount` from unreported to landing at `at_version`. Two slots: amounts that
    /// land at the same version share one; a third version merges into the newer slot,
    /// which then counts a little longer than needed, never shorter.
    pub fn land(&mut self, amount: u64, at_version: u64, snapshot_version: u64) {
        self.unreported = self.unreported.saturating_sub(amount);
        for slot in &mut self.landing {
            if slot.0 <= snapshot_version {
                *slot = (0, 0);
            }
        }
        if amount == 0 {
            return;
        }
        if let Some(slot) = self.landing.iter_mut().find(|s| s.0 == at_version) {
            slot.1 = slot.1.saturating_add(amount);
        } else if let Some(slot) = self.landing.iter_mut().find(|s| **s == (0, 0)) {
            *slot = (at_version, amount);
        } else {
            let newer = usize::from(self.landing[1].0 > self.landing[0].0);
            let slot = &mut self.landing[newer];
            *slot = (slot.0.max(at_version), slot.1.saturating_add(amount));
        }
    }
}

impl Cell for Ledger {
    fn decode(bytes: &[u8]) -> Self {
        Ledger::decode(bytes)
    }

    fn encode(&self) -> Vec<u8> {
        Ledger::encode(self).to_vec()
    }
}

fn update<T>(
    shared: &impl SharedData,
    name: &str,
    change: impl FnMut(&mut Ledger) -> Option<T>,
) -> Result<Option<T>, HostError> {
    kv::update(shared, name, change)
}

/// Creates an empty ledger in `name` unless there is one: for the leader, before it
/// stores the key or account it belongs to.
pub fn ensure(shared: &impl SharedData, name: &str) -> Result<(), HostError> {
    if shared.get(name)?.is_none() {
        shared.set(name, &Ledger::default().encode(), None)?;
    }
    Ok(())
}

/// How a reservation treats credit leases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    /// Leases are off.
    Off,
    /// The request must fit the lease at this time (Unix ms); if it does not, its need is
    /// added to the next ask.
    Ask(u64),
    /// As `Ask`, for a request whose ask was answered: if it does not fit, it is refused
    /// when the answer fell short or the ask failed; if other requests took the lease
    /// first, it asks again.
    Answered(u64),
}

/// Reserves `amount` in `name` if `limit` minus what the ledger holds (against a snapshot
/// at `version`) covers it and, with credit leases, this Envoy's lease does too. A
/// request that costs nothing needs no lease.
pub fn reserve(
    shared: &impl SharedData,
    name: &str,
    limit: i64,
    amount: u64,
    version: u64,
    lease: Lease,
) -> Result<Reserve, HostError> {
    let (now_ms, ask) = match lease {
        Lease::Off => (None, false),
        Lease::Ask(now) => (Some(now), true),
        Lease::Answered(now) => (Some(now), false),
    };
    let done = update(shared, name, |ledger| {
        let left = i128::from(limit) - i128::from(ledger.pending(version));
        if left < i128::from(amount) {
            return Some(Reserve::OverLimit);
        }
        if let Some(now_ms) = now_ms.filter(|_| amount > 0) {
            if !ledger.lease_covers(amount, now_ms) {
                if !ask && ledger.flags & ASK_FAILED != 0 {
                    return Some(Reserve::LeaseFailed);
                }
                if !ask && ledger.flags & SHORT != 0 {
                    return Some(Reserve::LeaseShort);
                }
                let wake = ledger.need == 0;
                let list = ledger.flags & LISTED == 0;
                ledger.need = ledger.need.saturating_add(amount);
                ledger.flags |= LISTED;
                return Some(Reserve::NeedLease {
                    ask: ledger.asked.saturating_add(1),
                    list,
                    wake,
                });
            }
        }
        ledger.reserved = ledger.reserved.saturating_add(amount);
        Some(Reserve::Admitted)
    })?;
    Ok(done.unwrap_or(Reserve::OverLimit))
}

/// A request needs a larger share of a rate limit (ledger `name`, see `limits::credit`):
/// one more request, or token, or request in flight. `answered`: its ask was answered
/// already, and it is refused (`LeaseShort`, `LeaseFailed`) rather than asking again
/// if the answer fell short or failed.
pub fn need_share(
    shared: &impl SharedData,
    name: &str,
    answered: bool,
) -> Result<Reserve, HostError> {
    let done = update(shared, name, |ledger| {
        if answered && ledger.flags & ASK_FAILED != 0 {
            return Some(Reserve::LeaseFailed);
        }
        if answered && ledger.flags & SHORT != 0 {
            return Some(Reserve::LeaseShort);
        }
        let wake = ledger.need == 0;
        let list = ledger.flags & LISTED == 0;
        ledger.need = ledger.need.saturating_add(1);
        ledger.flags |= LISTED;
        Some(Reserve::NeedLease {
            ask: ledger.asked.saturating_add(1),
            list,
            wake,
        })
    })?;
    Ok(done.unwrap_or(Reserve::LeaseFailed))
}

/// The ledger in `name` as it stands.
pub fn read(shared: &impl SharedData, name: &str) -> Result<Ledger, HostError> {
    Ok(shared
        .get(name)?
        .map_or_else(Ledger::default, |(bytes, _)| Ledger::decode(&bytes)))
}

/// A request ended: its reservation goes, what it cost waits for the key-service.
pub fn settle(
    shared: &impl SharedData,
    name: &str,
    reserved: u64,
    cost: u64,
) -> Result<(), HostError> {
    update(shared, name, |ledger| {
        ledger.reserved = ledger.reserved.saturating_sub(reserved);
        ledger.unreported = ledger.unreported.saturating_add(cost);
        ledger.spent = ledger.spent.saturating_add(cost);
        Some(())
    })?;
    Ok(())
}

/// The key-service took usage costing `cost`; snapshots from `at_version` show it.
pub fn landed(
    shared: &impl SharedData,
    name: &str,
    cost: u64,
    at_version: u64,
    snapshot_version: u64,
) -> Result<(), HostError> {
    update(shared, name, |ledger| {
        ledger.land(cost, at_version, snapshot_version);
        Some(())
    })?;
    Ok(())
}

/// Usage costing `cost` will never reach the key-service (refused, or dropped from a full
/// outbox): it stops counting.
pub fn lost(shared: &impl SharedData, name: &str, cost: u64) -> Result<(), HostError> {
    update(shared, name, |ledger| {
        ledger.unreported = ledger.unreported.saturating_sub(cost);
        // Never billed, so not spent from the lease either.
        ledger.spent = ledger.spent.saturating_sub(cost);
        Some(())
    })?;
    Ok(())
}

/// What the filter knows of a request before it is sent, to estimate its cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Estimate {
    /// Size of the request body: the prompt is at most about a token per 4 bytes of it.
    pub body_bytes: u64,
    /// The request's own output limit (`max_tokens` and its kin), if it set one.
    pub max_output_tokens: Option<u64>,
}

impl Estimate {
    /// Credits the request may cost at most (as far as a request can say): a token per 4
    /// body bytes in, the output limit (or `default_output_tokens`) out.
    pub fn credits(&self, price: Option<Price>, ratio: f64, default_output_tokens: u64) -> u64 {
        let tokens = self.tokens(default_output_tokens);
        u64::try_from(pricing::cost(tokens, price, ratio)).unwrap_or(0)
    }

    /// The tokens the request may use at most: a token per 4 body bytes in, the output
    /// limit (or `default_output_tokens`) out.
    pub fn tokens(&self, default_output_tokens: u64) -> Tokens {
        Tokens {
            input: self.body_bytes.div_ceil(4),
            output: self.max_output_tokens.unwrap_or(default_output_tokens),
            ..Tokens::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::testing::MemShared;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const KEY: &str = "kg:q:k:key_1";

    fn ledger(shared: &MemShared) -> Ledger {
        Ledger::decode(&shared.get(KEY).unwrap().unwrap().0)
    }

    /// Reserves without credit leases.
    fn admits(shared: &MemShared, limit: i64, amount: u64, version: u64) -> bool {
        reserve(shared, KEY, limit, amount, version, Lease::Off).unwrap() == Reserve::Admitted
    }

    #[test]
    fn ledgers_round_trip_and_garbage_reads_as_empty() {
        let l = Ledger {
            reserved: 1,
            unreported: u64::MAX,
            landing: [(7, 3), (9, 4)],
            spent: 5,
            granted: 6,
            lease_until_ms: 7,
            need: 8,
            asked: 9,
            answered: 10,
            flags: LISTED,
            ask_ms: 11,
            ask_committed: 12,
        };
        assert_eq!(Ledger::decode(&l.encode()), l);
        assert_eq!(Ledger::decode(b"short"), Ledger::default());
        // An older filter's ledger (six words) reads with no lease.
        let old = Ledger::decode(&l.encode()[..48]);
        assert_eq!(
            (old.unreported, old.landing, old.granted),
            (u64::MAX, l.landing, 0)
        );
    }

    #[test]
    fn reservations_stop_at_the_limit_and_come_back_when_settled() {
        let shared = MemShared::default();
        ensure(&shared, KEY).unwrap();
        // 100 credits left: two requests estimated at 40 fit, a third does not.
        assert!(admits(&shared, 100, 40, 5));
        assert!(admits(&shared, 100, 40, 5));
        assert!(!admits(&shared, 100, 40, 5));
        // One ends having cost 10: 30 of its 40 come back.
        settle(&shared, KEY, 40, 10).unwrap();
        assert_eq!(ledger(&shared).pending(5), 50);
        assert!(admits(&shared, 100, 40, 5));
        assert!(!admits(&shared, 100, 11, 5));
        // A request that costs nothing always fits, even at the limit.
        assert!(admits(&shared, 100, 0, 5));
    }

    #[test]
    fn a_cost_counts_until_the_snapshot_shows_it() {
        let shared = MemShared::default();
        ensure(&shared, KEY).unwrap();
        assert!(admits(&shared, 100, 40, 5));
        settle(&shared, KEY, 40, 25).unwrap();
        assert_eq!(ledger(&shared).pending(5), 25, "unreported");
        // The key-service took it; snapshots from version 8 include it.
        landed(&shared, KEY, 25, 8, 5).unwrap();
        let l = ledger(&shared);
        assert_eq!((l.unreported, l.pending(7), l.pending(8)), (0, 25, 0));
        // The slot is reused once the snapshot is past it.
        landed(&shared, KEY, 0, 9, 8).unwrap();
        assert_eq!(ledger(&shared).landing, [(0, 0), (0, 0)]);
    }

    #[test]
    fn a_third_landing_version_merges_into_the_newer_slot() {
        let mut l = Ledger {
            unreported: 60,
            ..Ledger::default()
        };
        l.land(10, 6, 5);
        l.land(20, 7, 5);
        l.land(30, 9, 5);
        assert_eq!(l.landing, [(6, 10), (9, 50)]);
        assert_eq!((l.pending(6), l.pending(8), l.pending(9)), (50, 50, 0));
        l.land(5, 9, 6);
        assert_eq!(l.landing, [(0, 0), (9, 55)]);
    }

    #[test]
    fn with_leases_a_request_must_fit_the_lease_too() {
        let shared = MemShared::default();
        let lease = |now| reserve(&shared, KEY, 1_000, 40, 5, Lease::Ask(now)).unwrap();
        // No lease yet: the first request asks for one (listing the ledger, waking the
        // leader), the second adds its need to the same ask.
        assert_eq!(
            lease(10),
            Reserve::NeedLease {
                ask: 1,
                list: true,
                wake: true
            }
        );
        assert_eq!(
            lease(10),
            Reserve::NeedLease {
                ask: 1,
                list: false,
                wake: false
            }
        );
        assert_eq!(ledger(&shared).need, 80);
        // A lease of 100 until t=1000: two fit, a third does not (it waits for ask 2).
        kv::update(&shared, KEY, |l: &mut Ledger| {
            (l.granted, l.lease_until_ms, l.need, l.asked) = (100, 1_000, 0, 1);
            Some(())
        })
        .unwrap();
        assert_eq!(lease(20), Reserve::Admitted);
        assert_eq!(lease(20), Reserve::Admitted);
        assert_eq!(
            lease(20),
            Reserve::NeedLease {
                ask: 2,
                list: false,
                wake: true
            }
        );
        // Once answered, a request that still does not fit is refused if the answer fell
        // short (or the ask failed); if others took the lease first, it asks again.
        let answered = |flags| {
            kv::update(&shared, KEY, |l: &mut Ledger| {
                l.flags = flags;
                Some(())
            })
            .unwrap();
            reserve(&shared, KEY, 1_000, 40, 5, Lease::Answered(20)).unwrap()
        };
        assert_eq!(answered(LISTED | SHORT), Reserve::LeaseShort);
        assert_eq!(answered(LISTED | ASK_FAILED), Reserve::LeaseFailed);
        let again = Reserve::NeedLease {
            ask: 2,
            list: false,
            wake: false,
        };
        assert_eq!(answered(LISTED), again);
        assert_eq!(ledger(&shared).need, 80);
        // What was spent stays spent: a request that cost 30 of its 40 frees 10 of the
        // lease, not 40.
        settle(&shared, KEY, 40, 30).unwrap();
        assert_eq!(ledger(&shared).committed(), 70);
        assert!(!ledger(&shared).lease_covers(40, 20));
        assert!(ledger(&shared).lease_covers(30, 20));
        // An expired lease covers nothing; a free request needs none.
        assert!(!ledger(&shared).lease_covers(1, 1_000));
        assert_eq!(
            reserve(&shared, KEY, 1_000, 0, 5, Lease::Ask(5_000)).unwrap(),
            Reserve::Admitted
        );
        // The snapshot's limit still comes first.
        assert_eq!(
            reserve(&shared, KEY, 10, 40, 5, Lease::Ask(20)).unwrap(),
            Reserve::OverLimit
        );
        // Usage that will never be billed was never spent.
        lost(&shared, KEY, 30).unwrap();
        assert_eq!(ledger(&shared).spent, 0);
    }

    #[test]
    fn lost_usage_stops_counting() {
        let shared = MemShared::default();
        settle(&shared, KEY, 0, 30).unwrap();
        lost(&shared, KEY, 30).unwrap();
        assert_eq!(ledger(&shared).pending(0), 0);
    }

    #[test]
    fn estimates_price_the_body_and_the_output_limit() {
        let price = Some(Price {
            input: 1_000_000.0,
            cached_input: 1_000_000.0,
            output: 2_000_000.0,
            cache_write: 1_000_000.0,
            per_request: 0.0,
        });
        let asked = Estimate {
            body_bytes: 400,
            max_output_tokens: Some(50),
        };
        // 100 tokens in at 1 credit, 50 out at 2.
        assert_eq!(asked.credits(price, 1.0, 4096), 200);
        assert_eq!(asked.credits(price, 0.5, 4096), 100);
        let silent = Estimate {
            body_bytes: 0,
            max_output_tokens: None,
        };
        assert_eq!(silent.credits(price, 1.0, 10), 20);
        assert_eq!(
            asked.credits(None, 1.0, 4096),
            0,
            "unpriced models are free"
        );
    }
}
