//! The leaf service: the upstream call (`forward`) with its retry rule (`retry`) and
//! response framing (`framing`), and the built-in echo upstream (`whoami`). What is done
//! to a client's request head before it gets here is in `stack`; header hygiene shared by
//! both is in `http::headers`.

pub mod forward;
pub mod framing;
pub mod retry;
pub mod whoami;
