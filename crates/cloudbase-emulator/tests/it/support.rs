//! The one harness of the emulator's tests: an emulator from [`EmulatorOptions`] on a free
//! port of 127.0.0.1, seeded users, and a typed client of it.

use std::net::SocketAddr;

use cloudbase_auth::types::Group;
use cloudbase_auth::{Client, Secret};
use cloudbase_emulator::{Emulator, EmulatorOptions, SeedUser};

/// The environment every test emulator belongs to: env `test-env`, client `test-client`
/// with secret `test-secret` (sent Basic credentials must carry it), code `123456`.
pub fn test_env(users: Vec<SeedUser>) -> EmulatorOptions {
    EmulatorOptions {
        env_id: "test-env".into(),
        client_id: "test-client".into(),
        client_secret: Secret::new("test-secret"),
        verification_code: "123456".into(),
        users,
        ..EmulatorOptions::default()
    }
}

/// A seeded user.
pub fn user(username: &str, password: &str) -> SeedUser {
    SeedUser {
        username: username.into(),
        password: Secret::new(password),
        ..SeedUser::default()
    }
}

/// A group membership, ending at `expires_at` (RFC 3339) if given.
pub fn group(id: &str, expires_at: Option<&str>) -> Group {
    match expires_at {
        None => Group::Id(id.into()),
        Some(at) => Group::Object {
            id: id.into(),
            expires_at: Some(at.into()),
        },
    }
}

/// Starts an emulator with `options` on 127.0.0.1:0; it serves until the test ends.
pub async fn spawn(options: &EmulatorOptions) -> (Emulator, SocketAddr) {
    let emulator = Emulator::new(options);
    let (addr, _task) = emulator
        .clone()
        .spawn(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("the emulator binds 127.0.0.1:0");
    (emulator, addr)
}

/// A client of the emulator at `addr` as `test-client` with `test-secret`.
pub fn client(addr: SocketAddr) -> Client {
    Client::builder(format!("http://{addr}/auth/v1"))
        .client_id("test-client")
        .client_secret(Secret::new("test-secret"))
        .build()
        .expect("client")
}
