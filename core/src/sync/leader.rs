//! The leader: the one VM of an Envoy holding the lease (`try_lead`) asks the key-service
//! for the snapshot, a full load page by page and then deltas, and writes each answer
//! into shared data (see `view` for what it holds).

use crate::keys::entry::{self, lookup};
use crate::keys::secret;
use crate::kv::{HostError, SharedData};
use crate::limits::ledger;
use crate::sync::snapshot::{KeyRecord, PageHead, SnapshotWire, TablesWire};
use crate::sync::view::{read_meta, update_meta, LEASE, TABLES};

/// Takes or renews the sync lease for the VM `me`; `Ok(true)` while it holds it.
///
/// The first VM to find no lease creates a free one and takes it on a later call: only
/// compare-and-swap on an existing entry decides who leads, because shared data cannot
/// create an entry only if it is absent.
pub fn try_lead(
    shared: &impl SharedData,
    me: u64,
    now_ms: u64,
    ttl_ms: u64,
) -> Result<bool, HostError> {
    let Some((value, cas)) = shared.get(LEASE)? else {
        shared.set(LEASE, b"0:0", None)?;
        return Ok(false);
    };
    let (owner, until_ms) = std::str::from_utf8(&value)
        .ok()
        .and_then(|v| v.split_once(':'))
        .and_then(|(o, u)| Some((o.parse::<u64>().ok()?, u.parse::<u64>().ok()?)))
        .unwrap_or((0, 0));
    if owner != me && until_ms > now_ms {
        return Ok(false);
    }
    let lease = format!("{me}:{}", now_ms.saturating_add(ttl_ms));
    shared.set(LEASE, lease.as_bytes(), Some(cas))
}

/// The next call the leader makes to `GET /filter/v1/snapshot`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ask {
    /// Query string, without the `?`.
    pub query: String,
    /// `If-None-Match` value, for deltas.
    pub if_none_match: Option<String>,
}

/// Where the leader is in syncing.
#[derive(Debug, Clone, PartialEq)]
enum Phase {
    /// Writing a full snapshot page by page under a reserved epoch.
    Loading {
        epoch: u32,
        /// Version of the first page: after the last one, a delta since it catches up
        /// with whatever changed while the pages were read.
        version: Option<u64>,
        after: Option<String>,
        keys: u64,
    },
    /// A complete snapshot is published: ask for deltas since its version.
    Deltas,
}

/// What an answer did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Ask again at once (more pages, or the catch-up delta after a full load).
    pub more: bool,
    /// Records skipped: unreadable (`KeyRecords::unreadable`), or with a hash or length
    /// the filter cannot store.
    pub skipped: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncError {
    Host(HostError),
    /// The key-service answered something the protocol does not allow.
    Protocol(&'static str),
    /// `kg:meta` changed under the leader: another VM wrote it, so this one stops.
    LostRace,
}

impl From<HostError> for SyncError {
    fn from(e: HostError) -> Self {
        SyncError::Host(e)
    }
}

/// The leader's side: what to ask the key-service, and how to write the answers.
#[derive(Debug, Default)]
pub struct Leader {
    phase: Option<Phase>,
    page_size: usize,
}

impl Leader {
    pub fn new(page_size: usize) -> Leader {
        Leader {
            phase: None,
            page_size,
        }
    }

    /// Forgets any load in progress (the lease was lost); the next leader starts its own.
    pub fn stop(&mut self) {
        self.phase = None;
    }

    pub fn is_loading(&self) -> bool {
        matches!(self.phase, Some(Phase::Loading { .. }))
    }

    /// What to ask next. A new leader continues with deltas from the snapshot in shared
    /// data if there is a complete one, and otherwise starts a full load.
    pub fn next_ask(&mut self, shared: &impl SharedData) -> Result<Ask, SyncError> {
        let (meta, _) = read_meta(shared)?;
        if self.phase.is_none() {
            self.phase = Some(if meta.is_loaded() {
                Phase::Deltas
            } else {
                self.reserve_epoch(shared)?
            });
        }
        Ok(match &self.phase {
            Some(Phase::Loading { after, .. }) => self.page(after.as_deref()),
            _ => Ask {
                query: format!("since={}", meta.version),
                if_none_match: Some(format!("\"{}\"", meta.version)),
            },
        })
    }

    /// During a full load, the ask for the page after the one `head` begins, known before
    /// that page is read and written: sent first, the key-service prepares the next page
    /// meanwhile.
    pub fn prefetch(&self, head: &PageHead) -> Option<Ask> {
        match (&self.phase, &head.next) {
            (Some(Phase::Loading { .. }), Some(next)) if !head.delta => Some(self.page(Some(next))),
            _ => None,
        }
    }

    fn page(&self, after: Option<&str>) -> Ask {
        Ask {
            query: match after {
                Some(after) => format!("limit={}&after={after}", self.page_size),
                None => format!("limit={}", self.page_size),
            },
            if_none_match: None,
        }
    }

    fn reserve_epoch(&self, shared: &impl SharedData) -> Result<Phase, SyncError> {
        let mut epoch = 0;
        let reserved = update_meta(shared, |meta| {
            epoch = meta.reserved_epoch.max(meta.epoch).wrapping_add(1).max(1);
            meta.reserved_epoch = epoch;
        })?;
        if !reserved {
            return Err(SyncError::LostRace);
        }
        Ok(Phase::Loading {
            epoch,
            version: None,
            after: None,
            keys: 0,
        })
    }

    /// The key-service confirmed the version held (304).
    pub fn confirmed(&mut self, shared: &impl SharedData, now_ms: u64) -> Result<(), SyncError> {
        if !update_meta(shared, |meta| meta.confirmed_at_ms = now_ms)? {
            return Err(SyncError::LostRace);
        }
        Ok(())
    }

    /// Writes an answer of the key-service into shared data.
    pub fn apply(
        &mut self,
        shared: &impl SharedData,
        wire: SnapshotWire,
        now_ms: u64,
    ) -> Result<Applied, SyncError> {
        let unreadable = wire.keys.unreadable();
        // A full answer to a delta request: the key-service no longer has the changes
        // since our version (or is a different database). Start over with a full load.
        if !wire.delta && matches!(self.phase, Some(Phase::Deltas)) {
            self.phase = Some(self.reserve_epoch(shared)?);
        }
        match self.phase.take() {
            Some(Phase::Loading {
                epoch,
                version,
                keys,
                ..
            }) => {
                if wire.delta {
                    return Err(SyncError::Protocol("a delta answered a full-load page"));
                }
                let version = version.unwrap_or(wire.version);
                let (written, skipped) = write_keys(shared, &wire.keys, epoch)?;
                let skipped = skipped.saturating_add(unreadable);
                let keys = keys + written;
                if wire.next.is_some() {
                    self.phase = Some(Phase::Loading {
                        epoch,
                        version: Some(version),
                        after: wire.next,
                        keys,
                    });
                    return Ok(Applied {
                        more: true,
                        skipped,
                    });
                }
                write_tables(shared, wire.groups, wire.accounts, wire.prices)?;
                let published = update_meta(shared, |meta| {
                    meta.epoch = epoch;
                    meta.version = version;
                    meta.confirmed_at_ms = now_ms;
                    meta.keys = keys;
                })?;
                if !published {
                    return Err(SyncError::LostRace);
                }
                self.phase = Some(Phase::Deltas);
                Ok(Applied {
                    more: true,
                    skipped,
                })
            }
            Some(Phase::Deltas) => {
                self.phase = Some(Phase::Deltas);
                let (meta, _) = read_meta(shared)?;
                let mut gone = 0;
                for hash in wire
                    .revoked
                    .iter()
                    .filter_map(|h| secret::parse_hash_hex(h))
                {
                    if lookup(shared, &hash, meta.epoch)?.is_some() {
                        gone += 1;
                    }
                    shared.set(&entry::name(&hash), &[], None)?;
                }
                let mut new = 0;
                for record in &wire.keys {
                    let known = secret::parse_hash_hex(&record.hash)
                        .map(|hash| lookup(shared, &hash, meta.epoch))
                        .transpose()?
                        .flatten();
                    new += u64::from(known.is_none());
                }
                // The tables first: a worker that finds a new key and not its group or
                // account rereads them (`http`), and must then find them.
                write_tables(shared, wire.groups, wire.accounts, wire.prices)?;
                let (written, skipped) = write_keys(shared, &wire.keys, meta.epoch)?;
                let skipped = skipped.saturating_add(unreadable);
                new = new.min(written);
                let published = update_meta(shared, |m| {
                    m.version = wire.version;
                    m.confirmed_at_ms = now_ms;
                    m.keys = (m.keys + new).saturating_sub(gone);
                    m.revoked += wire.revoked.len() as u64;
                })?;
                if !published {
                    return Err(SyncError::LostRace);
                }
                Ok(Applied {
                    more: false,
                    skipped,
                })
            }
            None => Err(SyncError::Protocol(
                "an answer arrived that was not asked for",
            )),
        }
    }
}

/// Writes records as entries of `epoch`; returns (written, skipped).
fn write_keys(
    shared: &impl SharedData,
    records: &[KeyRecord],
    epoch: u32,
) -> Result<(u64, usize), HostError> {
    let mut written = 0;
    let mut skipped = 0;
    for record in records {
        match entry::encode(record, epoch) {
            Ok((name, value)) => {
                // A limited key's ledger exists before the key can be seen.
                if record.remaining_quota.is_some() {
                    ledger::ensure(shared, &ledger::key_entry(&record.id))?;
                }
                for cap in &record.model_caps {
                    ledger::ensure(shared, &ledger::cap_entry(&record.id, cap.unit, &cap.model))?;
                }
                shared.set(&name, &value, None)?;
                written += 1;
            }
            Err(_) => skipped += 1,
        }
    }
    Ok((written, skipped))
}

fn write_tables(
    shared: &impl SharedData,
    groups: Vec<crate::sync::snapshot::GroupRecord>,
    accounts: Vec<crate::sync::snapshot::AccountRecord>,
    prices: Vec<crate::sync::snapshot::PriceRecord>,
) -> Result<(), HostError> {
    for account in accounts.iter().filter(|a| a.balance.is_some()) {
        ledger::ensure(shared, &ledger::account_entry(&account.name))?;
    }
    let tables = TablesWire {
        groups,
        accounts,
        prices,
    };
    let bytes = serde_json::to_vec(&tables).unwrap_or_default();
    shared.set(TABLES, &bytes, None)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::testing::MemShared;
    use crate::sync::snapshot::GroupRecord;
    use crate::sync::view::{View, META};
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn record(secret: &str) -> KeyRecord {
        KeyRecord::plain(&format!("id-{secret}"), secret, secret)
    }

    fn page(version: u64, secrets: &[&str], next: Option<&str>) -> SnapshotWire {
        SnapshotWire {
            version,
            keys: secrets.iter().map(|s| record(s)).collect(),
            next: next.map(str::to_string),
            ..Default::default()
        }
    }

    /// The head of `wire` as the leader reads it from the JSON.
    fn head(wire: &SnapshotWire) -> PageHead {
        let json = serde_json::to_vec(wire).unwrap();
        serde_json::from_slice(&json).unwrap()
    }

    fn delta(version: u64, secrets: &[&str], revoked: &[&str]) -> SnapshotWire {
        SnapshotWire {
            delta: true,
            revoked: revoked
                .iter()
                .map(|s| secret::hash_hex(&secret::hash(s)))
                .collect(),
            ..page(version, secrets, None)
        }
    }

    fn found(shared: &MemShared, secret: &str) -> Option<String> {
        let (meta, _) = read_meta(shared).unwrap();
        lookup(shared, &secret::hash(secret), meta.epoch)
            .unwrap()
            .map(|e| e.id().to_string())
    }

    fn load(shared: &MemShared, leader: &mut Leader, pages: Vec<SnapshotWire>) {
        for p in pages {
            let ask = leader.next_ask(shared).unwrap();
            assert!(ask.query.starts_with("limit=2"), "{ask:?}");
            assert!(leader.apply(shared, p, 1_000).unwrap().more);
        }
    }

    #[test]
    fn the_lease_goes_to_one_vm_and_moves_when_it_runs_out() {
        let shared = MemShared::default();
        // The first call only creates a free lease.
        assert_eq!(try_lead(&shared, 1, 0, 3_000), Ok(false));
        assert_eq!(try_lead(&shared, 2, 10, 3_000), Ok(true));
        assert_eq!(try_lead(&shared, 1, 20, 3_000), Ok(false));
        // The holder renews.
        assert_eq!(try_lead(&shared, 2, 2_000, 3_000), Ok(true));
        assert_eq!(try_lead(&shared, 1, 4_000, 3_000), Ok(false));
        // It stops renewing: another takes over once the lease has run out.
        assert_eq!(try_lead(&shared, 1, 5_001, 3_000), Ok(true));
        assert_eq!(try_lead(&shared, 2, 5_002, 3_000), Ok(false));
    }

    #[test]
    fn two_vms_racing_for_a_lease_cannot_both_win() {
        let shared = MemShared::default();
        shared.set(LEASE, b"0:0", None).unwrap();
        let (_, cas) = shared.get(LEASE).unwrap().unwrap();
        // VM 2 wins between VM 1's read and its write: VM 1's compare-and-swap fails.
        assert_eq!(try_lead(&shared, 2, 10, 3_000), Ok(true));
        assert_eq!(shared.set(LEASE, b"1:3010", Some(cas)), Ok(false));
        assert_eq!(try_lead(&shared, 1, 11, 3_000), Ok(false));
    }

    #[test]
    fn a_paged_full_load_is_published_only_when_complete() {
        let shared = MemShared::default();
        let mut leader = Leader::new(2);
        let ask = leader.next_ask(&shared).unwrap();
        assert_eq!(ask.query, "limit=2");
        let first = page(5, &["sk-a", "sk-b"], Some("cursor"));
        // The next page can be asked for before this one is written, and is the same ask.
        let early = leader.prefetch(&head(&first)).unwrap();
        assert!(leader.apply(&shared, first, 1_000).unwrap().more);
        assert_eq!(View::refresh(&shared, None).unwrap().map(|v| v.meta), None);
        assert_eq!(leader.next_ask(&shared).unwrap(), early);
        assert_eq!(early.query, "limit=2&after=cursor");
        let mut last = page(6, &["sk-c"], None);
        // Nothing follows the last page, nor any answer outside a full load.
        assert_eq!(leader.prefetch(&head(&last)), None);
        last.groups = vec![GroupRecord {
            name: "default".into(),
            models: vec!["gpt-4o".into()],
            ratio: 1.0,
            rpm: None,
            tpm: None,
        }];
        // The last page publishes, and asks at once for what changed since the first.
        assert!(leader.apply(&shared, last, 2_000).unwrap().more);
        let view = View::refresh(&shared, None).unwrap().unwrap();
        assert_eq!(
            (view.meta.version, view.meta.keys, view.meta.confirmed_at_ms),
            (5, 3, 2_000)
        );
        assert!(view.tables.group_models("default").allows("gpt-4o"));
        assert!(!view.tables.group_models("default").allows("gpt-4"));
        for s in ["sk-a", "sk-b", "sk-c"] {
            assert_eq!(found(&shared, s), Some(format!("id-{s}")));
        }
        let ask = leader.next_ask(&shared).unwrap();
        assert_eq!(ask.query, "since=5");
        assert_eq!(ask.if_none_match.as_deref(), Some("\"5\""));
        assert_eq!(
            leader.prefetch(&head(&page(7, &["sk-d"], Some("cursor")))),
            None
        );
    }

    #[test]
    fn deltas_update_and_revoke_by_hash() {
        let shared = MemShared::default();
        let mut leader = Leader::new(2);
        load(&shared, &mut leader, vec![page(5, &["sk-a", "sk-b"], None)]);
        leader.next_ask(&shared).unwrap();
        // sk-a rotated to sk-a2, sk-b deleted, sk-c created.
        let applied = leader
            .apply(
                &shared,
                delta(8, &["sk-a2", "sk-c"], &["sk-a", "sk-b"]),
                3_000,
            )
            .unwrap();
        assert!(!applied.more);
        assert_eq!(found(&shared, "sk-a"), None);
        assert_eq!(found(&shared, "sk-b"), None);
        assert_eq!(found(&shared, "sk-a2"), Some("id-sk-a2".into()));
        assert_eq!(found(&shared, "sk-c"), Some("id-sk-c".into()));
        let (meta, _) = read_meta(&shared).unwrap();
        assert_eq!((meta.version, meta.keys, meta.revoked), (8, 2, 2));
        leader.confirmed(&shared, 9_000).unwrap();
        assert_eq!(read_meta(&shared).unwrap().0.confirmed_at_ms, 9_000);
    }

    #[test]
    fn a_full_reload_leaves_keys_it_no_longer_has_unknown() {
        let shared = MemShared::default();
        let mut leader = Leader::new(2);
        load(&shared, &mut leader, vec![page(5, &["sk-a", "sk-b"], None)]);
        leader.next_ask(&shared).unwrap();
        // The key-service answers a delta request with a full snapshot: its change log no
        // longer reaches back. sk-b went meanwhile.
        let applied = leader
            .apply(&shared, page(40, &["sk-a"], None), 5_000)
            .unwrap();
        assert!(applied.more);
        assert_eq!(found(&shared, "sk-a"), Some("id-sk-a".into()));
        assert_eq!(found(&shared, "sk-b"), None);
        let (meta, _) = read_meta(&shared).unwrap();
        assert_eq!((meta.epoch, meta.version, meta.keys), (2, 40, 1));
    }

    #[test]
    fn a_new_leader_continues_from_the_snapshot_in_shared_data() {
        let shared = MemShared::default();
        let mut first = Leader::new(2);
        load(&shared, &mut first, vec![page(5, &["sk-a"], None)]);
        let mut second = Leader::new(2);
        assert_eq!(second.next_ask(&shared).unwrap().query, "since=5");
    }

    #[test]
    fn an_abandoned_load_is_never_published() {
        let shared = MemShared::default();
        let mut first = Leader::new(2);
        load(&shared, &mut first, vec![page(5, &["sk-a"], None)]);
        // A reload begins (epoch 2), writes sk-stale, and its VM dies.
        let mut reloading = Leader::new(2);
        reloading.phase = Some(reloading.reserve_epoch(&shared).unwrap());
        reloading
            .apply(&shared, page(41, &["sk-stale"], Some("c")), 2)
            .unwrap();
        reloading.stop();
        // The next leader's load gets a later epoch of its own: sk-stale stays unknown.
        let mut next = Leader::new(2);
        next.phase = Some(next.reserve_epoch(&shared).unwrap());
        next.apply(&shared, page(42, &["sk-a"], None), 3).unwrap();
        assert_eq!(found(&shared, "sk-stale"), None);
        assert_eq!(found(&shared, "sk-a"), Some("id-sk-a".into()));
    }

    #[test]
    fn unreadable_records_count_as_skipped() {
        let shared = MemShared::default();
        let mut leader = Leader::new(2);
        leader.next_ask(&shared).unwrap();
        let mut json = serde_json::to_value(page(5, &["sk-a"], None)).unwrap();
        json["keys"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"id": "x", "remaining_quota": 1.5e19}));
        let wire: SnapshotWire = serde_json::from_value(json).unwrap();
        let applied = leader.apply(&shared, wire, 1).unwrap();
        assert_eq!(applied.skipped, 1);
        assert_eq!(found(&shared, "sk-a"), Some("id-sk-a".into()));
    }

    #[test]
    fn bad_records_are_skipped_and_protocol_errors_refused() {
        let shared = MemShared::default();
        let mut leader = Leader::new(2);
        leader.next_ask(&shared).unwrap();
        let mut p = page(5, &["sk-a"], None);
        p.keys[0].hash = "not-hex".into();
        p.keys.push(record("sk-b"));
        let applied = leader.apply(&shared, p, 1).unwrap();
        assert_eq!(applied.skipped, 1);
        assert_eq!(found(&shared, "sk-b"), Some("id-sk-b".into()));
        // A delta where a page was asked for.
        let mut reloading = Leader::new(2);
        reloading.phase = Some(reloading.reserve_epoch(&shared).unwrap());
        assert_eq!(
            reloading.apply(&shared, delta(6, &[], &[]), 1),
            Err(SyncError::Protocol("a delta answered a full-load page"))
        );
        assert_eq!(
            Leader::new(2).apply(&shared, delta(6, &[], &[]), 1),
            Err(SyncError::Protocol(
                "an answer arrived that was not asked for"
            ))
        );
    }

    #[test]
    fn a_leader_that_lost_the_meta_to_another_stops() {
        let shared = MemShared::default();
        let mut leader = Leader::new(2);
        leader.next_ask(&shared).unwrap();
        let (_, cas) = shared.get(META).unwrap().unwrap();
        struct Racing<'a> {
            inner: &'a MemShared,
            cas: u32,
        }
        impl SharedData for Racing<'_> {
            fn get(&self, name: &str) -> Result<Option<(Vec<u8>, u32)>, HostError> {
                self.inner.get(name)
            }
            fn set(&self, name: &str, v: &[u8], cas: Option<u32>) -> Result<bool, HostError> {
                // Another VM writes the meta just before this one does.
                if name == META && cas == Some(self.cas) {
                    self.inner.set(META, b"{}", None)?;
                }
                self.inner.set(name, v, cas)
            }
        }
        let racing = Racing {
            inner: &shared,
            cas,
        };
        assert_eq!(
            leader.apply(&racing, page(5, &["sk-a"], None), 1),
            Err(SyncError::LostRace)
        );
    }

    #[test]
    fn each_key_is_one_entry() {
        let shared = MemShared::default();
        let mut leader = Leader::new(2);
        let secrets: Vec<String> = (0..50).map(|i| format!("sk-{i}")).collect();
        let names: Vec<&str> = secrets.iter().map(String::as_str).collect();
        load(&shared, &mut leader, vec![page(1, &names, None)]);
        // 50 keys + lease-free meta + tables.
        assert_eq!(shared.entries(), 52);
    }
}
