//! What a request asks for and whether it may: its credential, its route and model, and
//! the refusals (`decision::Denial`) with their OpenAI-style bodies.

pub mod billing;
pub mod body_scan;
pub mod credential;
pub mod decision;
pub mod error;
pub mod form_scan;
pub mod key_info;
pub mod model;
pub mod model_list;
pub mod route;
