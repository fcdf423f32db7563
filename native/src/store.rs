//! Shared data for the whole process: what proxy-wasm's shared data is to the Wasm filter
//! (a map of names to bytes with a compare-and-swap number per entry), here in ordinary
//! memory that every Envoy worker reads. The snapshot's entries, the quota ledgers, the
//! rate windows and the sync lease live in it, under the same names as in Wasm, so the
//! request core and the root work unchanged.
//!
//! The map is split into shards, each behind its own lock, so workers touching different
//! keys' ledgers do not wait for each other; a lock is held only to copy a value in or out.
//!
//! An entry is kept compact, since a million keys are a million entries: its name, value
//! and compare-and-swap number share one allocation (`Entry`).

use std::borrow::Borrow;
use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{OnceLock, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use keygate_core::kv::{Change, HostError, SharedData};

const SHARDS: usize = 64;

/// One entry in one allocation: its compare-and-swap number (4 bytes, little-endian),
/// its name's length (2 bytes), its name, its value. The map's slot holds only the
/// pointer and length (16 bytes), so a million keys cost their bytes and little more.
struct Entry(Box<[u8]>);

/// Bytes before the name.
const HEAD: usize = 6;

impl Entry {
    /// `None` for a name longer than 65,535 bytes (no name of keygate's is).
    fn new(name: &str, value: &[u8], cas: u32) -> Option<Entry> {
        let len = u16::try_from(name.len()).ok()?;
        let mut bytes = Vec::with_capacity(HEAD + name.len() + value.len());
        bytes.extend_from_slice(&cas.to_le_bytes());
        bytes.extend_from_slice(&len.to_le_bytes());
        bytes.extend_from_slice(name.as_bytes());
        bytes.extend_from_slice(value);
        Some(Entry(bytes.into_boxed_slice()))
    }

    fn name_len(&self) -> usize {
        usize::from(u16::from_le_bytes([self.0[4], self.0[5]]))
    }

    fn name(&self) -> &str {
        let bytes = &self.0[HEAD..HEAD + self.name_len()];
        // SAFETY: the bytes are a whole `&str` copied in `new`.
        unsafe { std::str::from_utf8_unchecked(bytes) }
    }

    fn value(&self) -> &[u8] {
        &self.0[HEAD + self.name_len()..]
    }

    fn cas(&self) -> u32 {
        u32::from_le_bytes([self.0[0], self.0[1], self.0[2], self.0[3]])
    }
}

impl Borrow<str> for Entry {
    fn borrow(&self) -> &str {
        self.name()
    }
}

// Hashed and compared by name, as the `str` it lends (`Borrow` requires it).
impl Hash for Entry {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.name().hash(state);
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Entry) -> bool {
        self.name() == other.name()
    }
}

impl Eq for Entry {}

type Shard = RwLock<HashSet<Entry>>;

/// A name too long for an entry: refused like a host failure.
const TOO_LONG: HostError = HostError(u32::MAX - 1);

pub struct Store {
    shards: Vec<Shard>,
    /// The last compare-and-swap number handed out (0 is never one).
    cas: AtomicU32,
}

impl Default for Store {
    fn default() -> Self {
        Store {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
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

    /// The shard of a name, by FNV-1a over its bytes (cheap; each shard's map hashes
    /// with its own random keys).
    fn shard(&self, name: &str) -> &Shard {
        let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        &self.shards[(hash % SHARDS as u64) as usize]
    }

    /// A shard to read. A shard's lock poisoned by a panic (a bug, contained at the hook)
    /// is taken anyway: a shard is never left half-changed, since every write makes its
    /// whole entry first and then puts it in place in one step.
    fn read(&self, name: &str) -> RwLockReadGuard<'_, HashSet<Entry>> {
        self.shard(name)
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A shard to write (a poisoned one too: see `read`).
    fn write(&self, name: &str) -> RwLockWriteGuard<'_, HashSet<Entry>> {
        self.shard(name)
            .write()
            .unwrap_or_else(PoisonError::into_inner)
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
            .map(|s| s.read().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }
}

impl SharedData for Store {
    fn get(&self, name: &str) -> Result<Option<(Vec<u8>, u32)>, HostError> {
        let shard = self.read(name);
        Ok(shard.get(name).map(|e| (e.value().to_vec(), e.cas())))
    }

    fn set(&self, name: &str, value: &[u8], cas: Option<u32>) -> Result<bool, HostError> {
        let mut shard = self.write(name);
        if let (Some(expected), Some(current)) = (cas, shard.get(name)) {
            if expected != current.cas() {
                return Ok(false);
            }
        }
        let entry = Entry::new(name, value, self.next_cas()).ok_or(TOO_LONG)?;
        shard.replace(entry);
        Ok(true)
    }

    /// Under the shard's write lock, so `change` runs once and always lands: workers
    /// updating one hot ledger wait for each other instead of racing (by compare-and-swap
    /// they could lose every try and fail the request). `change` only computes a value
    /// from another (`kv::update`): it never calls back into the store.
    fn modify(&self, name: &str, change: &mut Change<'_>) -> Result<bool, HostError> {
        let mut shard = self.write(name);
        let Some(new) = change(shard.get(name).map(Entry::value)) else {
            return Ok(false);
        };
        let entry = Entry::new(name, &new, self.next_cas()).ok_or(TOO_LONG)?;
        shard.replace(entry);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_any_length_are_found_by_their_whole_name() {
        let store = Store::default();
        let long = "l".repeat(200);
        let names = ["", "k", "k01234567890123456789", &"n".repeat(23), &long];
        for name in names {
            assert!(store.set(name, name.as_bytes(), None).unwrap());
        }
        // A name past 65,535 bytes is refused, not cut.
        assert_eq!(store.set(&"x".repeat(70_000), b"v", None), Err(TOO_LONG));
        for name in names {
            assert_eq!(store.get(name).unwrap().unwrap().0, name.as_bytes());
        }
        assert_eq!(store.get("k0123456789012345678").unwrap(), None);
        assert_eq!(store.len(), 5);
    }

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
    fn a_change_that_panics_changes_nothing_and_the_store_goes_on() {
        let store = Store::default();
        store.set("ledger", b"1", None).unwrap();
        let panicked = std::panic::catch_unwind(|| {
            store.modify("ledger", &mut |_| -> Option<Vec<u8>> {
                #[allow(clippy::panic)]
                {
                    panic!("a bug")
                }
            })
        });
        assert!(panicked.is_err());
        assert!(store.shard("ledger").is_poisoned());
        assert_eq!(store.get("ledger").unwrap().unwrap().0, b"1");
        assert!(store
            .modify("ledger", &mut |_| Some(b"2".to_vec()))
            .unwrap());
        assert_eq!(store.get("ledger").unwrap().unwrap().0, b"2");
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
        let store = std::sync::Arc::new(Store::default());
        // Created first: like Envoy's, the store cannot create an entry only if absent.
        store.set("ledger", &N(0).encode(), None).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let store = std::sync::Arc::clone(&store);
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
