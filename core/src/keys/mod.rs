//! A key as the filter holds it: the form and hash of its secret, its entry in shared data
//! (`entry::lookup`), and the addresses it may be used from.

pub mod client_ip;
pub mod entry;
pub mod secret;
