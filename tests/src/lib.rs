//! Test support for keygate: the end-to-end harness (`stack`, `api`, `seed`) and the mock LLM upstream
//! (`upstream`, run as the `mock-upstream` binary).

pub mod api;
pub mod browser;
pub mod oidc;
pub mod seed;
pub mod stack;
pub mod upstream;
