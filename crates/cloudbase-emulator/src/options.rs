//! [`EmulatorOptions`]: everything an emulator instance is started with. Plain values with
//! defaults; the emulator reads no file. A program maps its own configuration onto them
//! (the gateway maps its `[emulator]` and `[cloudbase]` tables).

use std::time::Duration;

use cloudbase_auth::types::Group;
use cloudbase_auth::Secret;

/// How an emulator instance behaves, and whom it knows. `Default` is a usable emulator:
/// env `emulator` in `ap-shanghai`, no users, code `000000`, two-hour tokens, anonymous
/// sign-in on, test hooks off, attempt limits on.
#[derive(Debug, Clone)]
pub struct EmulatorOptions {
    /// The environment id: the token issuer's host and `project_id`, and a client id this
    /// environment accepts. Default `emulator`.
    pub env_id: String,
    /// The region in the issuer's host. Default `ap-shanghai`.
    pub region: String,
    /// The client id this environment accepts beside `env_id` (`aud` of its tokens).
    /// Empty (default): `env_id`.
    pub client_id: String,
    /// When set, Basic credentials that are sent must carry it. Default empty: any secret
    /// of this environment's client ids is accepted.
    pub client_secret: Secret,
    /// The code every verification accepts. Default `000000`.
    pub verification_code: String,
    /// Lifetime of access tokens. Default 2 h.
    pub access_token_ttl: Duration,
    /// Anonymous sign-in allowed; when not, it answers 501 `unimplemented`. Default true.
    pub allow_anonymous: bool,
    /// Serve `/__emulator/stats` and `/__emulator/fault` (no CORS, JSON only). Default
    /// false: they answer 404, so no web page can inject faults.
    pub test_hooks: bool,
    /// How many wrong secrets the emulator takes before it answers 429.
    pub limits: AttemptLimits,
    /// The users that exist from the start.
    pub users: Vec<SeedUser>,
}

impl Default for EmulatorOptions {
    fn default() -> Self {
        EmulatorOptions {
            env_id: "emulator".to_owned(),
            region: "ap-shanghai".to_owned(),
            client_id: String::new(),
            client_secret: Secret::default(),
            verification_code: "000000".to_owned(),
            access_token_ttl: Duration::from_secs(2 * 60 * 60),
            allow_anonymous: true,
            test_hooks: false,
            limits: AttemptLimits::default(),
            users: Vec::new(),
        }
    }
}

/// Wrong passwords and verification codes the emulator takes before locking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptLimits {
    /// Failures per user (passwords) or per phone number / email (codes); 0 = no limit.
    /// Default 5.
    pub per_user: u32,
    /// Failures per client address, whatever the account; 0 = no limit. Default 20.
    pub per_client: u32,
    /// A locked user or client stays locked this long after its last counted failure,
    /// and failures are forgotten after this long without one. Default 15 min.
    pub lockout: Duration,
}

impl Default for AttemptLimits {
    fn default() -> Self {
        AttemptLimits {
            per_user: 5,
            per_client: 20,
            lockout: Duration::from_secs(15 * 60),
        }
    }
}

/// A user that exists from the start. Its `sub` is derived from the username, so it is
/// the same in every run.
#[derive(Debug, Clone, Default)]
pub struct SeedUser {
    pub username: String,
    /// 8 to 64 characters (CloudBase's rule; the emulator does not check seeded users).
    pub password: Secret,
    pub name: Option<String>,
    pub email: Option<String>,
    pub phone_number: Option<String>,
    /// Memberships; an `expires_at` (RFC 3339) ends one.
    pub groups: Vec<Group>,
}
