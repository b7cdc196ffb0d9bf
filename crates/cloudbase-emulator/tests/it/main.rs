//! The emulator's integration tests, one binary, over real sockets on 127.0.0.1: its HTTP
//! surface driven with plain reqwest (`api`), and the typed `cloudbase-auth` client
//! against it (`client`). [`support`] starts emulators. A new module goes here as
//! `mod name;`.

mod support;

mod api;
mod client;
