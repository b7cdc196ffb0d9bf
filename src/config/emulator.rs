//! `[emulator]`: whether the gateway embeds the CloudBase Auth v2 emulator, where, and the
//! emulator's own settings — the TOML face of `cloudbase_emulator::EmulatorOptions`, whose
//! crate knows no TOML keys. [`super::Config::emulator_options`] is the translation.

use std::net::SocketAddr;
use std::time::Duration;

use cloudbase_auth::types::Group;
use cloudbase_emulator::{AttemptLimits, EmulatorOptions, SeedUser};
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};

use super::cloudbase::CloudbaseSettings;
use super::ser;
use super::validate::{duration, socket_addr, Errors};
use crate::secret::Secret;

/// `[emulator]` as written. No `Debug`: users' passwords are secrets.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEmulator {
    enabled: Option<bool>,
    listen: Option<String>,
    verification_code: Option<String>,
    access_token_ttl: Option<String>,
    allow_anonymous: Option<bool>,
    test_hooks: Option<bool>,
    failed_attempts_per_user: Option<u32>,
    failed_attempts_per_client: Option<u32>,
    lockout: Option<String>,
    users: Option<Vec<RawEmulatorUser>>,
}

/// One `[[emulator.users]]` table as written.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEmulatorUser {
    username: Option<String>,
    password: Option<String>,
    name: Option<String>,
    email: Option<String>,
    phone_number: Option<String>,
    groups: Option<Vec<RawGroup>>,
}

/// A group is either `"admin"` or `{ id = "admin", expires_at = "2026-12-31T00:00:00Z" }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawGroup {
    Id(String),
    Table {
        id: String,
        expires_at: Option<String>,
    },
}

/// `[emulator]`, validated. `Default` holds the defaults: the gateway's own two
/// (`enabled`, `listen`), the rest the emulator's ([`EmulatorOptions::default`]).
#[derive(Debug, Clone)]
pub struct EmulatorSettings {
    /// Start the emulator inside the gateway process. Default false.
    pub enabled: bool,
    /// Default `127.0.0.1:8081`.
    pub listen: SocketAddr,
    /// See [`EmulatorOptions::verification_code`].
    pub verification_code: String,
    /// See [`EmulatorOptions::access_token_ttl`].
    pub access_token_ttl: Duration,
    /// See [`EmulatorOptions::allow_anonymous`].
    pub allow_anonymous: bool,
    /// See [`EmulatorOptions::test_hooks`].
    pub test_hooks: bool,
    /// `failed_attempts_per_user`, `failed_attempts_per_client`, `lockout`.
    pub limits: AttemptLimits,
    /// `[[emulator.users]]`.
    pub users: Vec<SeedUser>,
}

impl Default for EmulatorSettings {
    fn default() -> Self {
        let e = EmulatorOptions::default();
        EmulatorSettings {
            enabled: false,
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            verification_code: e.verification_code,
            access_token_ttl: e.access_token_ttl,
            allow_anonymous: e.allow_anonymous,
            test_hooks: e.test_hooks,
            limits: e.limits,
            users: e.users,
        }
    }
}

/// What the emulator is started with: `[emulator]`, and from `[cloudbase]` the identity
/// it shares with the gateway (env id, region, client id and secret; empty ones take the
/// emulator's defaults).
pub(super) fn options(e: &EmulatorSettings, c: &CloudbaseSettings) -> EmulatorOptions {
    EmulatorOptions {
        env_id: c.env_id.clone(),
        region: c.region.clone(),
        client_id: c.client_id.clone(),
        client_secret: c.client_secret.clone(),
        verification_code: e.verification_code.clone(),
        access_token_ttl: e.access_token_ttl,
        allow_anonymous: e.allow_anonymous,
        test_hooks: e.test_hooks,
        limits: e.limits,
        users: e.users.clone(),
    }
}

/// The effective configuration's `[emulator]` table, under the TOML keys; the verification
/// code and the users' passwords redacted.
impl Serialize for EmulatorSettings {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Keys<'a> {
            enabled: bool,
            listen: SocketAddr,
            verification_code: &'static str,
            #[serde(serialize_with = "ser::duration")]
            access_token_ttl: Duration,
            allow_anonymous: bool,
            test_hooks: bool,
            failed_attempts_per_user: u32,
            failed_attempts_per_client: u32,
            #[serde(serialize_with = "ser::duration")]
            lockout: Duration,
            users: Vec<User<'a>>,
        }
        Keys {
            enabled: self.enabled,
            listen: self.listen,
            verification_code: ser::REDACTED,
            access_token_ttl: self.access_token_ttl,
            allow_anonymous: self.allow_anonymous,
            test_hooks: self.test_hooks,
            failed_attempts_per_user: self.limits.per_user,
            failed_attempts_per_client: self.limits.per_client,
            lockout: self.limits.lockout,
            users: self.users.iter().map(User).collect(),
        }
        .serialize(s)
    }
}

/// One `[[emulator.users]]` table in the effective configuration.
struct User<'a>(&'a SeedUser);

impl Serialize for User<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let u = self.0;
        let mut table = s.serialize_map(None)?;
        table.serialize_entry("username", &u.username)?;
        table.serialize_entry(
            "password",
            if u.password.is_empty() {
                ""
            } else {
                ser::REDACTED
            },
        )?;
        for (key, value) in [
            ("name", &u.name),
            ("email", &u.email),
            ("phone_number", &u.phone_number),
        ] {
            if let Some(v) = value {
                table.serialize_entry(key, v)?;
            }
        }
        table.serialize_entry(
            "groups",
            &u.groups.iter().map(SeedGroup).collect::<Vec<_>>(),
        )?;
        table.end()
    }
}

/// A group as written: `"id"`, or `{ id, expires_at }`.
struct SeedGroup<'a>(&'a Group);

impl Serialize for SeedGroup<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.expires_at() {
            None => s.serialize_str(self.0.id()),
            Some(at) => {
                let mut table = s.serialize_map(Some(2))?;
                table.serialize_entry("id", self.0.id())?;
                table.serialize_entry("expires_at", at)?;
                table.end()
            }
        }
    }
}

pub(super) fn validate(raw: RawEmulator, errors: &mut Errors) -> EmulatorSettings {
    let d = EmulatorSettings::default();
    let limits = validate_limits(&raw, d.limits, errors);
    let mut users = Vec::new();
    for (i, u) in raw.users.unwrap_or_default().into_iter().enumerate() {
        let key = |k: &str| format!("emulator.users[{i}].{k}");
        let Some(username) = u.username else {
            errors.push(key("username"), "missing");
            continue;
        };
        let password = u.password.unwrap_or_default();
        if !(8..=64).contains(&password.chars().count()) {
            errors.push(
                key("password"),
                "must be 8 to 64 characters (CloudBase's rule)",
            );
        }
        let groups = u
            .groups
            .unwrap_or_default()
            .into_iter()
            .map(|g| match g {
                RawGroup::Id(id) => Group::Id(id),
                RawGroup::Table { id, expires_at } => Group::Object { id, expires_at },
            })
            .collect();
        users.push(SeedUser {
            username,
            password: Secret::new(password),
            name: u.name,
            email: u.email,
            phone_number: u.phone_number,
            groups,
        });
    }
    let verification_code = raw.verification_code.unwrap_or(d.verification_code);
    if verification_code.is_empty() {
        errors.push("emulator.verification_code", "must not be empty");
    }
    EmulatorSettings {
        enabled: raw.enabled.unwrap_or(d.enabled),
        listen: socket_addr(raw.listen, "emulator.listen", d.listen, errors),
        verification_code,
        access_token_ttl: duration(
            raw.access_token_ttl,
            "emulator.access_token_ttl",
            d.access_token_ttl,
            errors,
        ),
        allow_anonymous: raw.allow_anonymous.unwrap_or(d.allow_anonymous),
        test_hooks: raw.test_hooks.unwrap_or(d.test_hooks),
        limits,
        users,
    }
}

fn validate_limits(raw: &RawEmulator, d: AttemptLimits, errors: &mut Errors) -> AttemptLimits {
    let lockout = duration(raw.lockout.clone(), "emulator.lockout", d.lockout, errors);
    if lockout.is_zero() {
        errors.push(
            "emulator.lockout",
            "must be longer than 0 (set failed_attempts_per_user/per_client = 0 to turn a limit off)",
        );
    }
    AttemptLimits {
        per_user: raw.failed_attempts_per_user.unwrap_or(d.per_user),
        per_client: raw.failed_attempts_per_client.unwrap_or(d.per_client),
        lockout,
    }
}
