//! What every VM of an Envoy counts together in shared data: each limited key's and
//! account's quota ledger (reserved, unreported and landing credits) and each rate-limited
//! key's windows.

pub mod credit;
pub mod ledger;
pub mod rate;
