//! Shared data for the whole process: what proxy-wasm's shared data is to the Wasm filter
//! (a map of names to bytes with a compare-and-swap number per entry), here in ordinary
//! memory that every Envoy worker reads. The snapshot's entries, the quota ledgers, the
//! rate windows and the sync lease live in it, under the same names as in Wasm, so the
//! request core and the root work unchanged.
//!
//! The map is split into shards, each behind its own lock, so workers touching different
//! keys' ledgers do not wait for each other; a lock is held only to copy a value in or out.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use keygate_core::kv::{HostError, SharedData};

const SHARDS: usize = 64;

/// A lock poisoned by a panic elsewhere: reported like a host failure (the request is
/// refused with 503, never passed unchecked).
const POISONED: HostError = HostError(u32::MAX);

type Shard = RwLock<HashMap<Box<str>, (Arc<[u8]>, u32)>>;

pub struct Store {
    shards: Vec<Shard>,
    hasher: RandomState,
    /// The last compare-and-swap number handed out (0 is never one).
    cas: AtomicU32,
}

impl Default for Store {
    fn default() -> Self {
        Store {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            hasher: RandomState::new(),
            cas: AtomicU32::new(0),
        }
    }
}

impl Store {
    /// The process's store, shared by every filter configuration (as proxy-wasm shares
    /// data between the VMs of one `vm_id`).
    pub fn global() -> &'static Store {
        static STORE: OnceLock<Store> = OnceLock::new();
        STORE.get_or_init(Store::default)
    }

    fn shard(&self, name: &str) -> &Shard {
        let i = self.hasher.hash_one(name) as usize % SHARDS;
        &self.shards[i]
    }

    fn next_cas(&self) -> u32 {
        // Wraps after 2^32 writes, skipping 0; a stale number is refused unless exactly
        // 2^32 writes happened in between.
        loop {
            let n = self.cas.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
            if n != 0 {
                return n;
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries held now (for tests and the memory figures).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().map_or(0, |m| m.len()))
            .sum()
    }
}

impl SharedData for Store {
    fn get(&self, name: &str) -> Result<Option<(Vec<u8>, u32)>, HostError> {
        let shard = self.shard(name).read().map_err(|_| POISONED)?;
        Ok(shard.get(name).map(|(value, cas)| (value.to_vec(), *cas)))
    }

    fn set(&self, name: &str, value: &[u8], cas: Option<u32>) -> Result<bool, HostError> {
        let mut shard = self.shard(name).write().map_err(|_| POISONED)?;
        let entry = shard.get_mut(name);
        if let (Some(expected), Some((_, current))) = (cas, entry.as_ref()) {
            if expected != *current {
                return Ok(false);
            }
        }
        let next = self.next_cas();
        match entry {
            Some(slot) => *slot = (Arc::from(value), next),
            None => {
                shard.insert(Box::from(name), (Arc::from(value), next));
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_and_swap_as_envoy_does() {
        let store = Store::default();
        assert_eq!(store.get("a").unwrap(), None);
        assert!(store.set("a", b"1", None).unwrap());
        let (value, cas) = store.get("a").unwrap().unwrap();
        assert_eq!(value, b"1");
        assert!(store.set("a", b"2", Some(cas)).unwrap());
        // The old number no longer matches.
        assert!(!store.set("a", b"3", Some(cas)).unwrap());
        assert_eq!(store.get("a").unwrap().unwrap().0, b"2");
        // Without a number, a write always lands.
        assert!(store.set("a", b"4", None).unwrap());
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn ledgers_updated_from_many_threads_lose_nothing() {
        use keygate_core::kv::{update, Cell};
        #[derive(Clone, PartialEq)]
        struct N(u64);
        impl Cell for N {
            fn decode(bytes: &[u8]) -> Self {
                N(bytes.try_into().map(u64::from_le_bytes).unwrap_or(0))
            }
            fn encode(&self) -> Vec<u8> {
                self.0.to_le_bytes().to_vec()
            }
        }
        let store = Arc::new(Store::default());
        // Created first: like Envoy's, the store cannot create an entry only if absent.
        store.set("ledger", &N(0).encode(), None).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let store = Arc::clone(&store);
                std::thread::spawn(move || {
                    for _ in 0..2_000 {
                        update::<N, ()>(&*store, "ledger", |n| {
                            n.0 += 1;
                            Some(())
                        })
                        .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let (bytes, _) = store.get("ledger").unwrap().unwrap();
        assert_eq!(N::decode(&bytes).0, 8_000);
    }
}
