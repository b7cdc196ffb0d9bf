//! Typed client of the CloudBase Auth v2 HTTP API.
pub mod types;
