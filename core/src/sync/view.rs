//! The key snapshot in proxy-wasm shared data: one copy per Envoy, whatever its worker
//! count, written by one VM (the leader) and read by all.
//!
//! Envoy runs one Wasm VM per worker thread (and one on the main thread). All VMs of the
//! plugin see the same shared data, a string-to-bytes map with a compare-and-swap number
//! per entry. It holds:
//!
//! - `kg:lease`: `owner:until_ms`. The VM that holds it syncs with the key-service; the
//!   others only read. Taken and renewed by compare-and-swap, so two VMs never both
//!   believe they hold it past one renewal (this also works under Istio, which has no
//!   singleton VM). A leader that dies is replaced once its lease runs out.
//! - `kg:meta`: JSON `Meta`: the snapshot version, the epoch of the last complete full
//!   load, when the key-service last confirmed it, and counts for the stats.
//! - `kg:tables`: JSON `TablesWire`, the groups, accounts and prices (small; each VM
//!   keeps them parsed and rereads them when the version changes).
//! - one entry per key, named by its hash (`entry::name`), value `entry::encode`.
//! - `kg:q:k:{key id}` and `kg:q:a:{account}`: the quota ledgers of limited keys and
//!   accounts (`ledger`), created here before the key or account is stored.
//!
//! Shared data has no delete. A revoked hash (rotated away, deleted) is overwritten with
//! an empty value. A full load writes every key with a new epoch and then publishes that
//! epoch in `kg:meta`; entries of older epochs (keys that were gone by then) read as
//! unknown. Neither frees memory: see docs/architecture.md on key churn.

use serde::{Deserialize, Serialize};

use crate::kv::{HostError, SharedData};
use crate::sync::snapshot::{Tables, TablesWire};

pub const LEASE: &str = "kg:lease";
pub const META: &str = "kg:meta";
pub const TABLES: &str = "kg:tables";

/// Bumped when the layout of the entries or the meta changes: a filter finding another
/// format in shared data (an upgrade in place) starts a full load of its own.
/// 2: entries carry the key's rate limits and the tables the groups' (a filter of format 1
/// left entries without them, so an upgrade in place reloads).
const META_FORMAT: u32 = 2;

/// What `kg:meta` holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    pub format: u32,
    /// Epoch of the last complete full load; entries written before it are stale. 0 until
    /// the first full load completes.
    pub epoch: u32,
    /// Highest epoch handed to a full load, complete or not, so no two loads share one.
    pub reserved_epoch: u32,
    /// Snapshot version the entries reflect.
    pub version: u64,
    /// Unix milliseconds of the key-service's last good answer.
    pub confirmed_at_ms: u64,
    /// Live keys.
    pub keys: u64,
    /// Revoked entries (empty values kept because shared data cannot delete).
    pub revoked: u64,
}

impl Meta {
    /// Whether a complete snapshot is in shared data.
    pub fn is_loaded(&self) -> bool {
        self.format == META_FORMAT && self.epoch > 0
    }
}

/// `kg:meta` and its compare-and-swap number; an unreadable value counts as none.
pub fn read_meta(shared: &impl SharedData) -> Result<(Meta, Option<u32>), HostError> {
    Ok(match shared.get(META)? {
        Some((bytes, cas)) => (
            serde_json::from_slice(&bytes).unwrap_or_default(),
            Some(cas),
        ),
        None => (Meta::default(), None),
    })
}

/// Changes `kg:meta` unless someone else changed it since it was read; `Ok(false)` then.
pub(super) fn update_meta(
    shared: &impl SharedData,
    change: impl FnOnce(&mut Meta),
) -> Result<bool, HostError> {
    let (mut meta, cas) = read_meta(shared)?;
    if meta.format != META_FORMAT {
        meta = Meta {
            format: META_FORMAT,
            ..Meta::default()
        };
    }
    change(&mut meta);
    let bytes = serde_json::to_vec(&meta).unwrap_or_default();
    shared.set(META, &bytes, cas)
}

/// A VM's view of the snapshot, shared by its root and HTTP contexts; `None` until a
/// complete snapshot is in shared data.
pub type SharedView = std::rc::Rc<std::cell::RefCell<Option<View>>>;

/// What one VM holds of the shared snapshot: the meta and the parsed tables.
#[derive(Debug, Default)]
pub struct View {
    pub meta: Meta,
    pub tables: Tables,
}

impl View {
    /// Rereads the meta, and the tables if the version moved. `None` before the first
    /// complete load.
    pub fn refresh(
        shared: &impl SharedData,
        held: Option<View>,
    ) -> Result<Option<View>, HostError> {
        let (meta, _) = read_meta(shared)?;
        if !meta.is_loaded() {
            return Ok(None);
        }
        let tables = match held {
            Some(view) if view.meta.version == meta.version && view.meta.epoch == meta.epoch => {
                view.tables
            }
            _ => {
                let wire = shared
                    .get(TABLES)?
                    .and_then(|(bytes, _)| serde_json::from_slice::<TablesWire>(&bytes).ok())
                    .unwrap_or_default();
                Tables::new(wire)
            }
        };
        Ok(Some(View { meta, tables }))
    }
}
