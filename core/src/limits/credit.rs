//! Credit leases: how a fleet of Envoys spends a key's (or an account's) quota without
//! overdrawing it. The key-service is the one authority on what is left. Each Envoy (a
//! "holder", named at random when it starts) holds a lease of credit per limited key or
//! account in use: `granted`, what it may have spent in all, until `lease_until_ms`. Its
//! requests spend from the lease in the shared-data ledger (`ledger`), with no call-out
//! once a lease is held. The key-service grants only what no other holder's lease and no
//! billed usage already covers, so everything the fleet can spend adds up to at most the
//! quota; a request can overdraw only by what it costs beyond its estimate.
//!
//! The syncing VM (the leader) asks for leases in one call for every ledger due
//! (`Book::due`): a ledger with requests waiting (`need`), one whose lease runs low
//! against its rate of spending, or one a third of a lease old (renewed, or given back
//! when the key has stopped spending). Each ask says what this Envoy has spent or holds
//! (`spent`, which the key-service counts as this holder's until its usage is billed), what
//! the waiting requests need and what the leader wants for the next third of a lease; the
//! answer is the new `granted`. Before it sends, the leader lowers its own `granted` to
//! what it asks for, so the key-service may shrink a lease without a race with the
//! requests spending it meanwhile.
//!
//! Ledgers with a lease are listed in shared data (`LIST`), so the leader finds them; a
//! request that needs a lease lists its ledger, bumps `DEMAND` and wakes the leader through
//! a shared queue (`QUEUE`); the leader also reads `DEMAND` on its ticks.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::kv::{self, Cell, HostError, SharedData};
use crate::limits::ledger::{Ledger, ASK_FAILED, LISTED, SHORT};
use crate::limits::rate;

/// The ledgers with a lease (or waiting for one), as a JSON list of their names.
pub const LIST: &str = "kg:credit:list";
/// A counter bumped when a request starts waiting for a lease.
pub const DEMAND: &str = "kg:credit:demand";
/// This Envoy's name at the key-service.
pub const HOLDER: &str = "kg:credit:holder";
/// The id of the shared queue through which requests wake the leader (little-endian u32),
/// written by the leader that registered it.
pub const QUEUE: &str = "kg:credit:queue";
/// The name of that queue.
pub const QUEUE_NAME: &str = "keygate.credit.wake";

/// The id of the leader's wake-up queue, if one was registered.
pub fn queue(shared: &impl SharedData) -> Option<u32> {
    let (bytes, _) = shared.get(QUEUE).ok()??;
    Some(u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?))
}

/// Publishes the leader's wake-up queue.
pub fn set_queue(shared: &impl SharedData, id: u32) -> Result<(), HostError> {
    if queue(shared) != Some(id) {
        shared.set(QUEUE, &id.to_le_bytes(), None)?;
    }
    Ok(())
}

/// Ledgers listed at most: an Envoy with more limited keys in use at once has the
/// requests of the others wait out `credit_lease_wait_ms` and get 503.
pub const MAX_LISTED: usize = 100_000;

/// Ledgers in one ask at most (the key-service takes 1,000); the rest go in the next.
pub const ASK_MAX: usize = 1_000;

/// Bytes of one ask at most: half the key-service's bound on a request body (1 MiB).
/// Subjects naming a key's cap on a model are long (a key id and a model name): a
/// thousand of them could pass that bound, and the key-service would refuse every ask
/// while they stay due, the others' with them.
pub const ASK_BYTES_MAX: usize = 512 * 1024;

/// What one ledger adds to an ask, at most: its subject as JSON escapes it, and the
/// rest of its item (`{"subject":"","spent":,"need":,"want":},` with three 20-digit
/// numbers).
fn ask_bytes(ledger_name: &str) -> usize {
    let subject = subject(ledger_name).unwrap_or(ledger_name);
    let escaped: usize = subject
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum();
    escaped + 41 + 3 * 20
}

/// Room in an ask for its holder, `ttl_ms` and the brackets.
const ASK_HEAD_BYTES: usize = 128;

/// How often the leader looks through every listed ledger for leases running low, when
/// no request is waiting.
pub const SCAN_MS: u64 = 100;

/// The ledger of this Envoy's share of a key's rate limit: `kind` `r` (requests per
/// minute), `t` (tokens per minute) or `p` (requests in flight). Its `granted` is the
/// share; what counts against it is the key's window (`limits::rate`), not `spent`.
pub fn share_entry(kind: char, key_id: &str) -> String {
    format!("kg:q:{kind}:{key_id}")
}

/// The kinds of share ledgers, in `rate::Window::shares` order.
pub const SHARE_KINDS: [char; 3] = ['r', 't', 'p'];

/// For a share ledger, which share it is (`rate::REQUESTS`, `TOKENS`, `IN_FLIGHT`) and
/// its key id.
fn share_of(ledger_name: &str) -> Option<(usize, &str)> {
    let (kind, id) = ledger_name.strip_prefix("kg:q:")?.split_once(':')?;
    let which = SHARE_KINDS
        .iter()
        .position(|k| kind.len() == 1 && kind.starts_with(*k))?;
    Some((which, id))
}

/// Writes a share ledger's lease into its key's window, where requests read it.
fn mirror_share(shared: &impl SharedData, ledger_name: &str, l: &Ledger) -> Result<(), HostError> {
    let Some((which, key_id)) = share_of(ledger_name) else {
        return Ok(());
    };
    let share = rate::Share {
        granted: l.granted,
        until_ms: l.lease_until_ms,
        kept: l.flags & ASK_FAILED != 0,
    };
    rate::set_share(shared, &rate::entry_name(key_id), which, share)
}

/// The subject of a ledger at the key-service: `k:{key id}` or `a:{account}` (credit),
/// `m:{key id}:{unit}:{model}` (a key's cap on those models, counting `credits` or
/// `tokens`), `r:`, `t:` or
/// `p:` and a key id (a share of its rate limits).
pub fn subject(ledger_name: &str) -> Option<&str> {
    ledger_name.strip_prefix("kg:q:")
}

#[derive(Debug, Clone, Default, PartialEq)]
struct Listed(Vec<String>);

impl Cell for Listed {
    fn decode(bytes: &[u8]) -> Self {
        Listed(serde_json::from_slice(bytes).unwrap_or_default())
    }

    fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(&self.0).unwrap_or_default()
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Counter(u64);

impl Cell for Counter {
    fn decode(bytes: &[u8]) -> Self {
        let mut word = [0; 8];
        if let Some(b) = bytes.get(..8) {
            word.copy_from_slice(b);
        }
        Counter(u64::from_le_bytes(word))
    }

    fn encode(&self) -> Vec<u8> {
        self.0.to_le_bytes().to_vec()
    }
}

/// Puts a ledger in the list (a request's first need of a lease); `false` if the list is
/// full.
pub fn list(shared: &impl SharedData, ledger: &str) -> Result<bool, HostError> {
    let added = kv::update(shared, LIST, |listed: &mut Listed| {
        if listed.0.iter().any(|n| n == ledger) {
            return Some(true);
        }
        if listed.0.len() >= MAX_LISTED {
            return Some(false);
        }
        listed.0.push(ledger.to_owned());
        Some(true)
    })?;
    Ok(added == Some(true))
}

/// Tells the leader a request waits for a lease.
pub fn wake(shared: &impl SharedData) -> Result<(), HostError> {
    kv::update(shared, DEMAND, |c: &mut Counter| {
        c.0 = c.0.wrapping_add(1);
        Some(())
    })?;
    Ok(())
}

/// This Envoy's holder name, if the leader made one.
pub fn holder(shared: &impl SharedData) -> Option<String> {
    let (bytes, _) = shared.get(HOLDER).ok()??;
    String::from_utf8(bytes).ok().filter(|h| !h.is_empty())
}

/// This Envoy's holder name, made from `random` if it has none yet (by the leader only,
/// the one VM that asks for leases).
pub fn ensure_holder(shared: &impl SharedData, random: u64) -> Result<String, HostError> {
    if let Some(name) = holder(shared) {
        return Ok(name);
    }
    let name = format!("{random:016x}");
    shared.set(HOLDER, name.as_bytes(), None)?;
    Ok(name)
}

/// One ledger in an ask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub ledger: String,
    /// The ask's number for this ledger (`Ledger::asked` once sent).
    pub ask: u64,
    pub spent: u64,
    pub need: u64,
    pub want: u64,
}

/// `POST /filter/v1/leases`.
#[derive(Debug, Serialize)]
pub struct AskWire<'a> {
    pub holder: &'a str,
    pub ttl_ms: u64,
    pub leases: Vec<ItemWire<'a>>,
}

#[derive(Debug, Serialize)]
pub struct ItemWire<'a> {
    pub subject: &'a str,
    pub spent: u64,
    pub need: u64,
    pub want: u64,
}

/// The key-service's answer.
#[derive(Debug, Default, Deserialize)]
pub struct AnswerWire {
    pub leases: Vec<GrantWire>,
}

#[derive(Debug, Deserialize)]
pub struct GrantWire {
    pub subject: String,
    /// `false`: the subject has no limit (any more); the lease then does not bind.
    pub limited: bool,
    pub granted: u64,
}

/// The body of an ask for `items`.
pub fn ask_body(holder: &str, ttl_ms: u64, items: &[Item]) -> Vec<u8> {
    let leases = items
        .iter()
        .filter_map(|item| {
            Some(ItemWire {
                subject: subject(&item.ledger)?,
                spent: item.spent,
                need: item.need,
                want: item.want,
            })
        })
        .collect();
    let wire = AskWire {
        holder,
        ttl_ms,
        leases,
    };
    serde_json::to_vec(&wire).unwrap_or_default()
}

/// What the leader remembers between ticks: the demand counter it saw, when it last
/// looked through every ledger.
#[derive(Debug, Default)]
pub struct Book {
    demand_seen: u64,
    scanned_ms: u64,
}

/// What the leader does with a ledger now.
#[derive(Debug, PartialEq, Eq)]
enum Plan {
    /// Nothing.
    Wait,
    /// The requests waiting fit the lease as it is (it grew since they began to wait):
    /// their ask counts as answered, with no call.
    Covered,
    /// Ask for `need` and `want`.
    Ask { need: u64, want: u64 },
}

/// Whether a ledger needs an ask now, and what to ask for.
///
/// `committed` is what counts against the lease now: for credit what was spent or is
/// held; for a share of a rate (`level`), what the key's window counts, which the share
/// must never fall below. A share is sized to twice that.
fn plan(l: &Ledger, committed: u64, level: bool, now_ms: u64, ttl_ms: u64) -> Plan {
    let third = ttl_ms / 3;
    // The rate of spending since the last ask, projected over a third of a lease.
    let elapsed = now_ms.saturating_sub(l.ask_ms);
    let spent_since = committed.saturating_sub(l.ask_committed);
    let projected = if l.ask_ms == 0 || elapsed == 0 {
        0
    } else {
        u64::try_from(u128::from(spent_since) * u128::from(third) / u128::from(elapsed))
            .unwrap_or(u64::MAX)
    };
    let want = if level {
        l.need.max(committed)
    } else {
        l.need.max(projected).saturating_mul(2)
    };
    let lease = l.granted.saturating_sub(l.ask_committed);
    let left = l.granted.saturating_sub(committed);
    let low = left.saturating_mul(2) < lease.min(want);
    let old = now_ms.saturating_add(ttl_ms - third) >= l.lease_until_ms;
    let valid = now_ms < l.lease_until_ms;
    let unmet = l.need > 0 && !(valid && l.need <= left);
    if l.need > 0 && !unmet && !low && !old {
        return Plan::Covered;
    }
    if !(unmet || low || old) {
        return Plan::Wait;
    }
    // Growing (requests wait, or it runs low): never below what is held now, or the ask
    // would shrink the lease it means to grow. A renewal alone may give back.
    let want = if unmet || low {
        want.max(left.saturating_add(l.need))
    } else {
        want
    };
    Plan::Ask { need: l.need, want }
}

impl Book {
    /// The ledgers to ask for now (each stamped as asked), if a request waits or the
    /// periodic look through all of them is due.
    pub fn due(
        &mut self,
        shared: &impl SharedData,
        now_ms: u64,
        ttl_ms: u64,
    ) -> Result<Vec<Item>, HostError> {
        let demand = match shared.get(DEMAND)? {
            Some((bytes, _)) => Counter::decode(&bytes).0,
            None => 0,
        };
        if demand == self.demand_seen && now_ms < self.scanned_ms.saturating_add(SCAN_MS) {
            return Ok(Vec::new());
        }
        self.demand_seen = demand;
        self.scanned_ms = now_ms;
        let listed = match shared.get(LIST)? {
            Some((bytes, _)) => Listed::decode(&bytes).0,
            None => return Ok(Vec::new()),
        };
        let mut items = Vec::new();
        let mut bytes = ASK_HEAD_BYTES;
        for name in listed {
            // (Checked before the ledger is stamped as asked.)
            let more = ask_bytes(&name);
            if items.len() == ASK_MAX || (!items.is_empty() && bytes + more > ASK_BYTES_MAX) {
                // The rest on the next tick.
                self.scanned_ms = 0;
                break;
            }
            // A share is measured against the key's window.
            let level = match share_of(&name) {
                Some((which, key_id)) => {
                    let levels = rate::levels(shared, &rate::entry_name(key_id), now_ms)?;
                    Some(levels[which])
                }
                None => None,
            };
            let mut after = None;
            let item = kv::update(shared, &name, |l: &mut Ledger| {
                let committed = level.unwrap_or_else(|| l.committed());
                let (need, want) = match plan(l, committed, level.is_some(), now_ms, ttl_ms) {
                    Plan::Wait => return None,
                    Plan::Covered => {
                        l.asked = l.asked.saturating_add(1);
                        l.answered = l.asked;
                        l.need = 0;
                        return Some(None);
                    }
                    Plan::Ask { need, want } => (need, want),
                };
                l.asked = l.asked.saturating_add(1);
                l.need = 0;
                // Never more than asked for while the ask is out: the key-service may
                // shrink the lease to it.
                l.granted = l.granted.min(committed.saturating_add(want));
                l.ask_ms = now_ms;
                l.ask_committed = committed;
                after = Some(*l);
                Some(Some(Item {
                    ledger: name.clone(),
                    ask: l.asked,
                    spent: committed,
                    need,
                    want,
                }))
            })?;
            // A share lowered to what is asked for is lowered where requests read it too.
            if let (Some(l), Some(_)) = (after, level) {
                mirror_share(shared, &name, &l)?;
            }
            if let Some(item) = item.flatten() {
                bytes += more;
                items.push(item);
            }
        }
        Ok(items)
    }

    /// The key-service answered the ask sent at `sent_ms` for `items` (`None`: it failed).
    pub fn answered(
        &mut self,
        shared: &impl SharedData,
        items: &[Item],
        answer: Option<&AnswerWire>,
        sent_ms: u64,
        ttl_ms: u64,
    ) -> Result<(), HostError> {
        let mut unlisted = HashSet::new();
        for item in items {
            let grant = answer.and_then(|a| {
                a.leases
                    .iter()
                    .find(|g| Some(g.subject.as_str()) == subject(&item.ledger))
            });
            let gone = kv::update(shared, &item.ledger, |l: &mut Ledger| {
                l.answered = l.answered.max(item.ask);
                let Some(grant) = grant else {
                    l.flags |= ASK_FAILED;
                    return Some(false);
                };
                l.flags &= !ASK_FAILED;
                // A later ask went out meanwhile (another VM leads now): its answer
                // decides.
                if l.asked != item.ask {
                    return Some(false);
                }
                l.granted = if grant.limited {
                    grant.granted
                } else {
                    u64::MAX
                };
                // Short: the waiting requests that do not fit are refused (429), rather
                // than asking again for what is not there.
                if l.granted < item.spent.saturating_add(item.need) {
                    l.flags |= SHORT;
                } else {
                    l.flags &= !SHORT;
                }
                l.lease_until_ms = sent_ms.saturating_add(ttl_ms);
                // Given back whole, and nothing waits or is held: off the list.
                let idle = item.want == 0 && l.need == 0 && l.reserved == 0;
                if idle {
                    l.flags &= !LISTED;
                }
                Some(idle)
            })?;
            if gone == Some(true) {
                unlisted.insert(item.ledger.as_str());
            }
            if share_of(&item.ledger).is_some() {
                let l = crate::limits::ledger::read(shared, &item.ledger)?;
                mirror_share(shared, &item.ledger, &l)?;
            }
        }
        if !unlisted.is_empty() {
            kv::update(shared, LIST, |listed: &mut Listed| {
                listed.0.retain(|n| !unlisted.contains(n.as_str()));
                Some(())
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::testing::MemShared;
    use crate::limits::ledger::{self, Lease, Reserve};
    use crate::sync::snapshot::CapUnit;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const KEY: &str = "kg:q:k:key_1";
    const TTL: u64 = 30_000;

    fn reserve(shared: &MemShared, amount: u64, now: u64) -> Reserve {
        let r = ledger::reserve(shared, KEY, 1_000_000, amount, 1, Lease::Ask(now)).unwrap();
        if let Reserve::NeedLease {
            list: l, wake: w, ..
        } = r
        {
            if l {
                assert!(list(shared, KEY).unwrap());
            }
            if w {
                wake(shared).unwrap();
            }
        }
        r
    }

    fn grant(granted: u64) -> AnswerWire {
        AnswerWire {
            leases: vec![GrantWire {
                subject: "k:key_1".into(),
                limited: true,
                granted,
            }],
        }
    }

    #[test]
    fn a_waiting_request_is_asked_for_at_once_and_answered() {
        let shared = MemShared::default();
        let mut book = Book::default();
        assert!(
            book.due(&shared, 1_000, TTL).unwrap().is_empty(),
            "nothing listed"
        );
        assert_eq!(
            reserve(&shared, 40, 1_000),
            Reserve::NeedLease {
                ask: 1,
                list: true,
                wake: true
            }
        );
        // The next tick (1 ms later, before any periodic look) sees the demand.
        let items = book.due(&shared, 1_001, TTL).unwrap();
        assert_eq!(
            items,
            vec![Item {
                ledger: KEY.into(),
                ask: 1,
                spent: 0,
                need: 40,
                want: 80,
            }]
        );
        assert_eq!(ask_body("h1", TTL, &items), br#"{"holder":"h1","ttl_ms":30000,"leases":[{"subject":"k:key_1","spent":0,"need":40,"want":80}]}"#);
        // Asked once: the next tick has nothing new.
        assert!(book.due(&shared, 1_002, TTL).unwrap().is_empty());
        book.answered(&shared, &items, Some(&grant(80)), 1_001, TTL)
            .unwrap();
        let l = ledger::read(&shared, KEY).unwrap();
        assert_eq!(
            (l.granted, l.lease_until_ms, l.answered, l.need),
            (80, 31_001, 1, 0)
        );
        assert_eq!(reserve(&shared, 40, 1_010), Reserve::Admitted);
        assert_eq!(reserve(&shared, 40, 1_010), Reserve::Admitted);
        assert!(matches!(
            reserve(&shared, 40, 1_010),
            Reserve::NeedLease { ask: 2, .. }
        ));
    }

    #[test]
    fn requests_that_began_to_wait_before_a_big_grant_go_without_shrinking_it() {
        let shared = MemShared::default();
        let mut book = Book::default();
        reserve(&shared, 100, 0);
        let items = book.due(&shared, 1, TTL).unwrap();
        // Another request begins to wait while the ask is out (for ask 2).
        assert!(matches!(
            reserve(&shared, 100, 2),
            Reserve::NeedLease { ask: 2, .. }
        ));
        book.answered(&shared, &items, Some(&grant(10_000)), 1, TTL)
            .unwrap();
        // The lease covers it: no ask (which would have asked for its need alone and
        // lowered the lease to that), and its ask counts as answered.
        assert!(book.due(&shared, 3, TTL).unwrap().is_empty());
        let l = ledger::read(&shared, KEY).unwrap();
        assert_eq!((l.granted, l.asked, l.answered, l.need), (10_000, 2, 2, 0));
        assert_eq!(
            ledger::reserve(&shared, KEY, 1_000_000, 100, 1, Lease::Answered(4)).unwrap(),
            Reserve::Admitted
        );
    }

    #[test]
    fn a_failed_ask_is_marked_and_leaves_the_lease_as_it_was() {
        let shared = MemShared::default();
        let mut book = Book::default();
        reserve(&shared, 40, 1_000);
        let items = book.due(&shared, 1_001, TTL).unwrap();
        book.answered(&shared, &items, None, 1_001, TTL).unwrap();
        let l = ledger::read(&shared, KEY).unwrap();
        assert_eq!(
            (l.answered, l.flags & ASK_FAILED, l.granted),
            (1, ASK_FAILED, 0)
        );
    }

    #[test]
    fn leases_are_renewed_when_low_or_old_and_given_back_when_idle() {
        let shared = MemShared::default();
        let mut book = Book::default();
        reserve(&shared, 100, 0);
        let items = book.due(&shared, 1, TTL).unwrap();
        book.answered(&shared, &items, Some(&grant(200)), 1, TTL)
            .unwrap();
        // Spending 100 a second: after one request nothing is due (half the lease left).
        assert_eq!(reserve(&shared, 100, 1_000), Reserve::Admitted);
        ledger::settle(&shared, KEY, 100, 100).unwrap();
        assert!(book.due(&shared, 1_000, TTL).unwrap().is_empty());
        // After the second, less than half is left: renewed for the rate, before anyone
        // waits (100 in 2 s, over a third of a lease, twice).
        assert_eq!(reserve(&shared, 100, 2_000), Reserve::Admitted);
        ledger::settle(&shared, KEY, 100, 100).unwrap();
        let items = book.due(&shared, 2_000, TTL).unwrap();
        assert_eq!((items[0].spent, items[0].need), (200, 0));
        assert_eq!(items[0].want, 2 * (200 * 10_000 / 1_999));
        book.answered(
            &shared,
            &items,
            Some(&grant(200 + items[0].want)),
            2_000,
            TTL,
        )
        .unwrap();
        // Nothing spent for a third of a lease: asked again with want 0 (given back), and
        // once the key-service takes it back the ledger leaves the list.
        assert!(book.due(&shared, 11_000, TTL).unwrap().is_empty());
        let items = book.due(&shared, 12_000, TTL).unwrap();
        assert_eq!((items[0].want, items[0].spent), (0, 200));
        let l = ledger::read(&shared, KEY).unwrap();
        assert_eq!(
            l.granted, 200,
            "lowered to what is asked for while the ask is out"
        );
        book.answered(&shared, &items, Some(&grant(200)), 12_000, TTL)
            .unwrap();
        assert_eq!(ledger::read(&shared, KEY).unwrap().flags & LISTED, 0);
        assert_eq!(shared.get(LIST).unwrap().unwrap().0, b"[]");
        // A new request lists it again.
        assert!(matches!(
            reserve(&shared, 100, 13_000),
            Reserve::NeedLease { list: true, .. }
        ));
    }

    #[test]
    fn an_answer_to_an_older_ask_does_not_overwrite_a_newer_one() {
        let shared = MemShared::default();
        let mut old = Book::default();
        let mut new = Book::default();
        reserve(&shared, 40, 0);
        let first = old.due(&shared, 1, TTL).unwrap();
        reserve(&shared, 40, 2);
        let second = new.due(&shared, 2, TTL).unwrap();
        new.answered(&shared, &second, Some(&grant(50)), 2, TTL)
            .unwrap();
        old.answered(&shared, &first, Some(&grant(500)), 1, TTL)
            .unwrap();
        assert_eq!(ledger::read(&shared, KEY).unwrap().granted, 50);
    }

    /// A thousand caps with long model names need leases at once (as after the
    /// key-service was out of reach): each ask stays within `ASK_BYTES_MAX`, so the
    /// key-service takes it, and the rest go in the next. (In one ask they made 1.3 MB,
    /// which the key-service refused, every time.)
    #[test]
    fn an_ask_stays_within_its_bytes_and_the_rest_go_in_the_next() {
        let shared = MemShared::default();
        let mut book = Book::default();
        // 255 four-byte characters: a model name as the key-service took it before it
        // bounded names by bytes (256 now); and a quote, which JSON doubles.
        let model = format!("{}\"*", "\u{1d52a}".repeat(255));
        let names: Vec<String> = (0..1_000)
            .map(|i| {
                let key_id = format!("key_{i:0>124}");
                ledger::cap_entry(&key_id, CapUnit::Tokens, &format!("{i}{model}"))
            })
            .collect();
        for name in &names {
            let r = ledger::reserve(&shared, name, 1_000, 10, 1, Lease::Ask(0)).unwrap();
            assert!(matches!(r, Reserve::NeedLease { list: true, .. }));
        }
        // (Listed in one write: `list` one by one reads the whole list each time.)
        let listed = Listed(names.clone());
        shared.set(LIST, &listed.encode(), None).unwrap();
        let mut asked = 0;
        let mut asks = 0;
        while asked < names.len() {
            let items = book.due(&shared, 1_000 + asks, TTL).unwrap();
            assert!(!items.is_empty(), "{asked} asked, then nothing");
            let body = ask_body(&"h".repeat(64), TTL, &items);
            assert!(body.len() <= ASK_BYTES_MAX, "{} bytes", body.len());
            let wire: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(wire["leases"].as_array().unwrap().len(), items.len());
            // Answered (the leader sends one ask at a time).
            let answer = AnswerWire {
                leases: items
                    .iter()
                    .map(|item| GrantWire {
                        subject: subject(&item.ledger).unwrap().into(),
                        limited: true,
                        granted: 100,
                    })
                    .collect(),
            };
            book.answered(&shared, &items, Some(&answer), 1_000 + asks, TTL)
                .unwrap();
            asked += items.len();
            asks += 1;
        }
        assert_eq!((asked, asks), (1_000, 3), "each once");
    }

    #[test]
    fn the_list_is_bounded_and_holders_are_made_once() {
        let shared = MemShared::default();
        for i in 0..3 {
            assert!(list(&shared, &format!("kg:q:k:{i}")).unwrap());
        }
        assert!(list(&shared, "kg:q:k:0").unwrap(), "listed already");
        let h = ensure_holder(&shared, 0xabc).unwrap();
        assert_eq!(h, "0000000000000abc");
        assert_eq!(ensure_holder(&shared, 7).unwrap(), h);
        assert_eq!(holder(&shared), Some(h));
        assert_eq!(subject("kg:q:a:acme"), Some("a:acme"));
        assert_eq!(queue(&shared), None);
        set_queue(&shared, 7).unwrap();
        assert_eq!(queue(&shared), Some(7));
    }

    #[test]
    fn plans_never_overflow() {
        let l = Ledger {
            spent: u64::MAX,
            reserved: u64::MAX,
            granted: u64::MAX,
            need: u64::MAX,
            ask_ms: 1,
            ask_committed: 0,
            lease_until_ms: u64::MAX,
            ..Ledger::default()
        };
        assert_eq!(
            plan(&l, l.committed(), false, u64::MAX, 600_000),
            Plan::Ask {
                need: u64::MAX,
                want: u64::MAX
            }
        );
    }
}
