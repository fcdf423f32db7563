//! What a response used and what that costs: reading usage from bodies and streams
//! (`scan`), asking OpenAI streams for it (`include_usage`), prices (`pricing`), and the
//! records queued for the key-service (`report`, with ids from `request_id`).

pub mod include_usage;
pub mod pricing;
pub mod report;
pub mod request_id;
pub mod scan;
