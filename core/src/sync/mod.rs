//! The key snapshot: its wire format (`snapshot`), what each VM reads of it from shared
//! data (`view`), and the leader that loads it from the key-service (`leader`).

pub mod leader;
pub mod snapshot;
pub mod view;
