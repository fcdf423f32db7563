//! What every VM of an Envoy counts together in shared data: each limited key's and
//! account's quota ledger (reserved, unreported and landing credits, and this Envoy's
//! credit lease), each rate-limited key's windows (and this Envoy's shares of its
//! limits), and the leader's asks for leases (`credit`).

pub mod credit;
pub mod ledger;
pub mod rate;
