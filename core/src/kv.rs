//! Proxy-wasm shared data as the rest of the filter uses it: a string-to-bytes map with a
//! compare-and-swap number per entry (`SharedData`, which `host::Shared` implements over
//! the ABI and `testing::MemShared` in memory), and small values that workers change in
//! place by compare-and-swap (`Cell`, `update`): the quota ledgers and rate windows.
//! What lives in it, and under which names, is `shared`'s business.

/// A host call failed with this proxy-wasm status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostError(pub u32);

/// A change to one value of shared data: the bytes there now (`None` for a name never
/// set) to the bytes to write, or `None` to leave them.
pub type Change<'a> = dyn FnMut(Option<&[u8]>) -> Option<Vec<u8>> + 'a;

/// Proxy-wasm shared data, as the host offers it.
pub trait SharedData {
    /// The value and its compare-and-swap number; `None` for a name never set.
    fn get(&self, name: &str) -> Result<Option<(Vec<u8>, u32)>, HostError>;
    /// Sets a value, only if its compare-and-swap number is still `cas` when given.
    /// `Ok(false)`: it was not (someone else wrote in between).
    fn set(&self, name: &str, value: &[u8], cas: Option<u32>) -> Result<bool, HostError>;

    /// Changes a value in place: `change` is given the bytes there now (`None` for a name
    /// never set) and returns the bytes to write, or `None` to leave them; `Ok(true)` if
    /// it wrote. Here by compare-and-swap, `change` called again each time another
    /// worker wrote in between, given up after `MAX_TRIES` losses; a host that can hold
    /// the value still while `change` runs (the native store) calls it once, and never
    /// gives up.
    fn modify(&self, name: &str, change: &mut Change<'_>) -> Result<bool, HostError> {
        for _ in 0..MAX_TRIES {
            let (bytes, cas) = match self.get(name)? {
                Some((bytes, cas)) => (Some(bytes), Some(cas)),
                None => (None, None),
            };
            let Some(new) = change(bytes.as_deref()) else {
                return Ok(false);
            };
            if self.set(name, &new, cas)? {
                return Ok(true);
            }
        }
        Err(HostError(CAS_MISMATCH))
    }
}

/// A small value that workers change in place by compare-and-swap (a quota ledger, a
/// key's rate windows). Bytes it cannot read decode to its empty state.
pub trait Cell: Clone + PartialEq {
    fn decode(bytes: &[u8]) -> Self;
    fn encode(&self) -> Vec<u8>;
}

/// Compare-and-swap attempts before a change is given up (each loss means another VM
/// changed the value in between).
const MAX_TRIES: usize = 64;

/// The host status for a compare-and-swap mismatch, reported when every try lost.
const CAS_MISMATCH: u32 = 8;

/// Applies `change` to the cell in `name` (`SharedData::modify`: by compare-and-swap,
/// retried when another VM changed it in between, unless the host can do better).
/// `change` returning `None` leaves the cell as it is, and so does a change to the same
/// value. A cell not there yet is created from the empty state (without
/// compare-and-swap: shared data cannot create an entry only if it is absent).
pub fn update<C: Cell, T>(
    shared: &impl SharedData,
    name: &str,
    mut change: impl FnMut(&mut C) -> Option<T>,
) -> Result<Option<T>, HostError> {
    let mut out = None;
    shared.modify(name, &mut |bytes| {
        let cell = C::decode(bytes.unwrap_or_default());
        let mut changed = cell.clone();
        out = change(&mut changed);
        (out.is_some() && changed != cell).then(|| changed.encode())
    })?;
    Ok(out)
}

/// An in-memory `SharedData` with Envoy's semantics, for tests.
#[cfg(test)]
pub mod testing {
    use std::cell::RefCell;
    use std::collections::HashMap;

    use super::{HostError, SharedData};

    #[derive(Default)]
    pub struct MemShared {
        map: RefCell<HashMap<String, (Vec<u8>, u32)>>,
        next_cas: RefCell<u32>,
    }

    impl MemShared {
        pub fn entries(&self) -> usize {
            self.map.borrow().len()
        }
    }

    impl SharedData for MemShared {
        fn get(&self, name: &str) -> Result<Option<(Vec<u8>, u32)>, HostError> {
            Ok(self.map.borrow().get(name).cloned())
        }

        fn set(&self, name: &str, value: &[u8], cas: Option<u32>) -> Result<bool, HostError> {
            let mut map = self.map.borrow_mut();
            if let (Some(cas), Some((_, current))) = (cas, map.get(name)) {
                if cas != *current {
                    return Ok(false);
                }
            }
            let mut next = self.next_cas.borrow_mut();
            *next += 1;
            map.insert(name.to_string(), (value.to_vec(), *next));
            Ok(true)
        }
    }
}
