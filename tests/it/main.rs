//! The gateway's integration tests, one binary: each file below is a module, so the crate is
//! linked once instead of once per file (on two cores that is most of a test build).
//!
//! Everything runs over real sockets on 127.0.0.1 — the real gateway (in-process or the
//! binary), the real emulator, real upstreams, scripted raw-socket upstreams where a fault
//! needs one. [`support`] is the one harness: the config builder ([`support::Cfg`]), the
//! in-process gateway ([`support::Harness`]), the process guard for the binary
//! ([`support::Process`]), upstreams and a real `redis-server`.
//!
//! A new integration test module goes here as `mod name;` with its file beside this one;
//! start it from `use crate::support::*;`.

mod support;

mod cli;
mod emulator_cli;
mod forward_auth;
mod gateway;
mod js_sdk;
mod one_cpu;
mod ops;
mod production;
mod quickstart;
mod redis_tier;
mod relay;
mod replicas;
mod security;
mod security_paths;
mod streaming;
mod two_tiers;
mod upstream_faults;
