//! The client's integration tests, one binary: real sockets on 127.0.0.1 against servers
//! that misbehave on purpose. (The client against the real emulator is tested in the
//! `cloudbase-emulator` crate, which can depend on both.) A new module goes here as
//! `mod name;`.

mod errors;
