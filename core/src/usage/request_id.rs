//! The idempotency ids of usage records. The key-service bills each id once, so an id a
//! client could choose (Envoy keeps a client's `x-request-id` when
//! `preserve_external_request_id` is set, or behind a trusting edge) would let two calls
//! bill once. Each VM draws a random 128-bit prefix when it starts and counts its
//! requests: `kg-{prefix}-{count}`, unique across VMs, Envoys and restarts.

use std::cell::Cell;

#[derive(Debug)]
pub struct RequestIds {
    prefix: String,
    count: Cell<u64>,
}

impl RequestIds {
    /// Ids under a prefix made from `seed` (random bytes).
    pub fn new(seed: [u8; 16]) -> RequestIds {
        let prefix = seed.iter().map(|b| format!("{b:02x}")).collect();
        RequestIds {
            prefix,
            count: Cell::new(0),
        }
    }

    /// The next id (at most 52 characters).
    pub fn next(&self) -> String {
        let n = self.count.get();
        self.count.set(n.wrapping_add(1));
        format!("kg-{}-{n:x}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn ids_never_repeat_within_a_vm_and_differ_between_seeds() {
        let a = RequestIds::new([7; 16]);
        let b = RequestIds::new([8; 16]);
        let first = a.next();
        assert_eq!(first, format!("kg-{}-0", "07".repeat(16)));
        assert_ne!(a.next(), first);
        assert_ne!(b.next(), first);
        a.count.set(u64::MAX);
        assert!(a.next().len() <= 52);
    }
}
