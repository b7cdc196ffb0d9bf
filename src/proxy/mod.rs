//! Proxying: header hygiene (`headers`), what is done to a client's request head before
//! anything reads it (`inbound`), the upstream call (`forward`) with its retry rule
//! (`retry`) and response framing (`framing`), and the built-in echo upstream (`whoami`).

pub mod forward;
pub mod framing;
pub mod headers;
pub mod inbound;
pub mod retry;
pub mod whoami;

pub use inbound::{ClientHeadersLayer, HopByHopLayer};
