//! keygate's core: everything the filter decides, as plain Rust with no proxy in it, so
//! that it is tested natively (and in Node's V8, `make test-wasm`) and shared with the
//! key-service, which builds the same snapshot and usage records.
//!
//! - `request`: one request through the gate, driven by the filter's callbacks through the
//!   `Host` trait.
//! - `decide`: what a request asks for and whether it may: its credential, route, model.
//! - `keys`: a key as the filter holds it: its secret's form and hash, its entry in shared
//!   data, its IP allowlist.
//! - `limits`: the quota ledgers and rate windows every VM of an Envoy shares.
//! - `usage`: what a response used, what it costs, and the records sent to the key-service.
//! - `sync`: the snapshot's wire format, the VM's view of it and the leader that loads it.
//! - `root`: a VM's background work (sync, usage reports, credit leases), driven by the
//!   proxy through the `RootHost` trait; `stats`: the filter's stats through `StatSink`.
//! - `kv`: shared data as a trait (the host implements it; tests use `MemShared`).

pub mod config;
pub mod decide;
pub mod keys;
pub mod kv;
pub mod limits;
pub mod pairs;
pub mod request;
pub mod root;
pub mod stats;
pub mod sync;
pub mod usage;
