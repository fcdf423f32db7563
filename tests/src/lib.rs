//! Test support for keygate: the end-to-end harness (`stack`) and the mock LLM upstream
//! (`upstream`, run as the `mock-upstream` binary).

pub mod stack;
pub mod upstream;
