//! The emulator's memory: users, sessions, tokens, verifications and sudo grants.
//!
//! One plain struct behind one `std::sync::Mutex` (held by `Inner`), with every operation
//! a short synchronous method: no lock is ever held across an `.await`, signing and
//! parsing happen outside it, and the maps are O(1) per call. A single lock is simpler to
//! get right than per-map locks (a password change touches sessions, refresh tokens and
//! access tokens at once) and is far from the bottleneck at the request rates a test
//! suite produces. Methods take the current time as an argument so expiry is testable
//! without sleeping; the monotonic clock is tokio's, so integration tests can pause it.
//!
//! Refresh tokens rotate on every use and a session is their family (RFC 9700 §4.14.2):
//! a rotated-out token that comes back was copied by someone, and since the emulator
//! cannot tell whether the thief or the user presents it, it ends the whole session — the
//! current refresh token and every access token issued in the session die with it. That
//! is stricter than the RFC's minimum (revoke the active refresh token): an access token
//! minted from a stolen refresh token would otherwise live on for up to
//! `access_token_ttl`. The retired tokens of a session are remembered until it ends,
//! at most [`RETIRED_PER_SESSION`] of them.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::{Rng, RngCore};

use super::error::{ApiError, ErrorKind};
use super::limits::{Attempts, Subject};
use crate::options::{AttemptLimits, SeedUser};
use cloudbase_auth::types::{Group, ProfileProvider, Provider, UserProfile};

/// Verification ids and verification tokens live 600 s.
pub const VERIFICATION_TTL: Duration = Duration::from_secs(600);
/// Sudo tokens live 900 s.
pub const SUDO_TTL: Duration = Duration::from_secs(900);
/// Refresh tokens live 31 days.
pub const REFRESH_TTL_SECS: i64 = 31 * 24 * 3600;
/// Expired access-token entries are swept after this many issuances.
const SWEEP_EVERY: u32 = 4096;
/// Rotated-out refresh tokens remembered per session for reuse detection; older ones are
/// forgotten (and then refused as unknown, without ending the session). A session that
/// refreshes every 2 h reaches this after about 3 months, past the 31-day refresh life.
pub const RETIRED_PER_SESSION: usize = 1024;

/// The current time in both clocks the store needs.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    /// Unix seconds, for JWT `iat`/`exp` and refresh-token expiry.
    pub unix: i64,
    /// Monotonic (tokio's clock), for verification and sudo lifetimes and lockouts.
    pub instant: Instant,
}

impl Now {
    pub fn current() -> Self {
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        Now {
            unix,
            instant: Instant::now(),
        }
    }
}

/// `n` random bytes, base64url without padding.
pub fn random_token(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    rand::thread_rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// A phone number or an email address that a verification was sent to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Contact {
    Phone(String),
    Email(String),
}

impl Contact {
    /// From a request's `phone_number` / `email`; exactly one must be present.
    pub fn from_fields(phone: Option<&str>, email: Option<&str>) -> Result<Self, ApiError> {
        match (
            phone.filter(|s| !s.is_empty()),
            email.filter(|s| !s.is_empty()),
        ) {
            (Some(p), None) => Ok(Contact::Phone(normalize_phone(p))),
            (None, Some(e)) if e.contains('@') => Ok(Contact::Email(e.trim().to_owned())),
            (None, Some(_)) => Err(ApiError::invalid_argument("email is not an email address")),
            (None, None) => Err(ApiError::invalid_argument(
                "one of `phone_number` or `email` is required",
            )),
            (Some(_), Some(_)) => Err(ApiError::invalid_argument(
                "give `phone_number` or `email`, not both",
            )),
        }
    }

    /// The index key: phone numbers without spaces, emails lowercased.
    fn key(&self) -> String {
        match self {
            Contact::Phone(p) => p.chars().filter(|c| !c.is_whitespace()).collect(),
            Contact::Email(e) => e.to_lowercase(),
        }
    }

    fn provider(&self) -> &'static str {
        match self {
            Contact::Phone(_) => "phone",
            Contact::Email(_) => "email",
        }
    }
}

/// CloudBase numbers are `+CC NNNN…`; the JS SDK prefixes a bare number with `+86 `.
pub fn normalize_phone(p: &str) -> String {
    let p = p.trim();
    if p.starts_with('+') {
        p.to_owned()
    } else {
        format!("+86 {p}")
    }
}

/// Usernames: 2–48 chars of `A-Za-z0-9 -_.:+@`.
pub fn valid_username(u: &str) -> bool {
    (2..=48).contains(&u.chars().count())
        && u.chars()
            .all(|c| c.is_ascii_alphanumeric() || " -_.:+@".contains(c))
}

/// Passwords: 8–64 chars.
pub fn check_password(p: &str) -> Result<(), ApiError> {
    if (8..=64).contains(&p.chars().count()) {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorKind::InvalidPassword,
            "password must be 8 to 64 characters",
        ))
    }
}

/// A user account.
#[derive(Debug, Clone)]
pub struct User {
    pub sub: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub name: Option<String>,
    pub email: Option<String>,
    pub phone_number: Option<String>,
    pub picture: Option<String>,
    pub gender: Option<String>,
    pub groups: Vec<Group>,
    pub anonymous: bool,
    pub created_at: String,
    pub updated_at: String,
}

impl User {
    /// The `/user/me` body.
    pub fn profile(&self) -> UserProfile {
        let providers = self
            .provider_list()
            .into_iter()
            .map(|p| ProfileProvider {
                id: p.id,
                provider_user_id: Some(p.provider_user_name),
                name: Some(p.name),
            })
            .collect();
        UserProfile {
            sub: self.sub.clone(),
            user_id: Some(self.sub.clone()),
            name: self.name.clone(),
            username: self.username.clone(),
            email: self.email.clone(),
            phone_number: self.phone_number.clone(),
            picture: self.picture.clone(),
            gender: self.gender.clone(),
            status: Some("ACTIVE".to_owned()),
            groups: self.groups.clone(),
            providers,
            created_at: Some(self.created_at.clone()),
            updated_at: Some(self.updated_at.clone()),
            has_password: Some(self.password.is_some()),
            user_type: Some(
                if self.anonymous {
                    "anonymous"
                } else {
                    "external"
                }
                .to_owned(),
            ),
            internal_user_type: Some("generalUser".to_owned()),
        }
    }

    /// The `/user/provider` entries: one per way the user can sign in.
    pub fn provider_list(&self) -> Vec<Provider> {
        let entry = |id: &str, name: &str, value: &str| Provider {
            id: id.to_owned(),
            name: name.to_owned(),
            picture: String::new(),
            provider_user_name: value.to_owned(),
            provider_type: id.to_owned(),
            bind: true,
        };
        let mut out = Vec::new();
        if let Some(u) = &self.username {
            out.push(entry("username", "Username", u));
        }
        if let Some(p) = &self.phone_number {
            out.push(entry("phone", "Phone", p));
        }
        if let Some(e) = &self.email {
            out.push(entry("email", "Email", e));
        }
        out
    }

    fn active_group_ids(&self, now: i64) -> Vec<Group> {
        self.groups
            .iter()
            .filter(|g| g.is_active_at(now))
            .map(|g| Group::Id(g.id().to_owned()))
            .collect()
    }
}

/// What a handler needs to mint a token response after the store opened or rotated a
/// session. The access token is signed outside the lock.
#[derive(Debug, Clone)]
pub struct Issued {
    pub sub: String,
    pub jti: String,
    pub refresh_token: String,
    pub scope: &'static str,
    pub provider_type: String,
    pub user_type: &'static str,
    pub groups: Vec<Group>,
}

/// A verified bearer: the access token's user and session.
#[derive(Debug, Clone)]
pub struct Caller {
    pub sub: String,
    pub sid: u64,
    pub scope: String,
}

#[derive(Debug)]
struct Session {
    sub: String,
    refresh_token: String,
    refresh_expires: i64,
    provider_type: String,
    /// The `x-device-id` the session was opened from, if any.
    device: Option<String>,
    /// The refresh tokens this session rotated out, oldest first.
    retired: VecDeque<String>,
}

#[derive(Debug)]
struct AccessEntry {
    sid: u64,
    exp: i64,
}

#[derive(Debug)]
struct Pending {
    contact: Contact,
    expires: Instant,
}

/// Everything the emulator remembers.
#[derive(Debug, Default)]
pub struct Store {
    users: HashMap<String, User>,
    by_username: HashMap<String, String>,
    by_contact: HashMap<String, String>,
    by_device: HashMap<String, String>,
    sessions: HashMap<u64, Session>,
    /// Live refresh tokens -> session.
    refresh: HashMap<String, u64>,
    /// Rotated-out refresh tokens -> the session (family) they belonged to.
    retired: HashMap<String, u64>,
    access: HashMap<String, AccessEntry>,
    verifications: HashMap<String, Pending>,
    verification_tokens: HashMap<String, Pending>,
    sudo: HashMap<String, (String, Instant)>,
    attempts: Attempts,
    next_sid: u64,
    issued_since_sweep: u32,
}

impl Store {
    /// A store holding the configured users. Their subs are derived from the username, so
    /// they are stable across restarts.
    pub fn seeded(users: &[SeedUser], limits: AttemptLimits, now: Now) -> Self {
        let mut store = Store {
            attempts: Attempts::new(limits),
            ..Store::default()
        };
        for u in users {
            let digest = <sha2::Sha256 as sha2::Digest>::digest(u.username.as_bytes());
            let n = u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"));
            let sub = (1_000_000_000_000_000_000 + n % 9_000_000_000_000_000_000).to_string();
            let user = User {
                sub,
                username: Some(u.username.clone()),
                password: Some(u.password.expose().to_owned()),
                name: u.name.clone(),
                email: u.email.clone(),
                phone_number: u.phone_number.as_deref().map(normalize_phone),
                picture: None,
                gender: None,
                groups: u
                    .groups
                    .iter()
                    .map(|g| Group::Object {
                        id: g.id().to_owned(),
                        expires_at: g.expires_at().map(str::to_owned),
                    })
                    .collect(),
                anonymous: false,
                created_at: rfc3339(now.unix),
                updated_at: rfc3339(now.unix),
            };
            store.insert_user(user);
        }
        store
    }

    fn insert_user(&mut self, user: User) {
        if let Some(u) = &user.username {
            self.by_username.insert(u.clone(), user.sub.clone());
        }
        if let Some(p) = &user.phone_number {
            self.by_contact
                .insert(Contact::Phone(p.clone()).key(), user.sub.clone());
        }
        if let Some(e) = &user.email {
            self.by_contact
                .insert(Contact::Email(e.clone()).key(), user.sub.clone());
        }
        self.users.insert(user.sub.clone(), user);
    }

    pub fn user(&self, sub: &str) -> Option<&User> {
        self.users.get(sub)
    }

    fn by_contact(&self, contact: &Contact) -> Option<&User> {
        self.by_contact
            .get(&contact.key())
            .and_then(|s| self.users.get(s))
    }

    /// Sign-in with `username` + `password`; the name may also be an email or phone number.
    /// Wrong passwords count against the user and the client, unknown names against the
    /// client; a locked user or client is refused whatever the password.
    pub fn check_login(
        &mut self,
        name: &str,
        password: &str,
        client: &Subject,
        now: Now,
    ) -> Result<String, ApiError> {
        self.attempts.check(&[client], now.instant)?;
        let found = self
            .by_username
            .get(name)
            .and_then(|s| self.users.get(s))
            .or_else(|| {
                let contact = if name.contains('@') {
                    Contact::Email(name.to_owned())
                } else {
                    Contact::Phone(normalize_phone(name))
                };
                self.by_contact(&contact)
            })
            .map(|u| (u.sub.clone(), u.password.as_deref() == Some(password)));
        let Some((sub, password_ok)) = found else {
            self.attempts.failed(&[client], now.instant);
            return Err(ApiError::new(ErrorKind::NotFound, "user not found"));
        };
        let wrong = ApiError::new(ErrorKind::InvalidPassword, "wrong password");
        self.guess(&Subject::User(sub.clone()), client, password_ok, wrong, now)?;
        Ok(sub)
    }

    /// The lockout rule around one guess at a secret (a password or a code) of `subject`:
    /// refused with 429 while `subject` or `client` is locked, `correct` or not; otherwise
    /// a wrong guess is counted against both and answered with `wrong`, a right one clears
    /// `subject`'s failures.
    fn guess(
        &mut self,
        subject: &Subject,
        client: &Subject,
        correct: bool,
        wrong: ApiError,
        now: Now,
    ) -> Result<(), ApiError> {
        self.attempts.check(&[subject, client], now.instant)?;
        if correct {
            self.attempts.succeeded(subject);
            Ok(())
        } else {
            self.attempts.failed(&[subject, client], now.instant);
            Err(wrong)
        }
    }

    /// Whether a user already owns this phone number or email.
    pub fn contact_is_user(&self, contact: &Contact) -> bool {
        self.by_contact(contact).is_some()
    }

    /// Starts a verification; the code is the configured one.
    pub fn create_verification(&mut self, contact: Contact, now: Now) -> String {
        let id = random_token(16);
        self.verifications.retain(|_, p| p.expires > now.instant);
        self.verifications.insert(
            id.clone(),
            Pending {
                contact,
                expires: now.instant + VERIFICATION_TTL,
            },
        );
        id
    }

    /// Checks a code against a verification id and turns it into a verification token.
    /// Wrong codes count against the phone number or email and the client.
    pub fn verify(
        &mut self,
        id: &str,
        code_ok: bool,
        client: &Subject,
        now: Now,
    ) -> Result<String, ApiError> {
        self.attempts.check(&[client], now.instant)?;
        let contact = self
            .verifications
            .get(id)
            .filter(|p| p.expires > now.instant)
            .map(|p| p.contact.clone())
            .ok_or_else(|| ApiError::invalid_argument("verification_id is unknown or expired"))?;
        let wrong = ApiError::invalid_argument("verification code mismatch");
        self.guess(
            &Subject::Contact(contact.key()),
            client,
            code_ok,
            wrong,
            now,
        )?;
        self.verifications.remove(id);
        let token = random_token(24);
        self.verification_tokens
            .retain(|_, p| p.expires > now.instant);
        self.verification_tokens.insert(
            token.clone(),
            Pending {
                contact,
                expires: now.instant + VERIFICATION_TTL,
            },
        );
        Ok(token)
    }

    fn peek_verification_token(&self, token: &str, now: Now) -> Result<Contact, ApiError> {
        self.verification_tokens
            .get(token)
            .filter(|p| p.expires > now.instant)
            .map(|p| p.contact.clone())
            .ok_or_else(|| {
                ApiError::invalid_argument("verification_token is unknown, used or expired")
            })
    }

    /// Sign-in with a verification token: the user owning its contact.
    pub fn login_by_verification(
        &mut self,
        token: &str,
        now: Now,
    ) -> Result<(String, &'static str), ApiError> {
        let contact = self.peek_verification_token(token, now)?;
        let sub = self
            .by_contact(&contact)
            .map(|u| u.sub.clone())
            .ok_or_else(|| ApiError::new(ErrorKind::NotFound, "user not found"))?;
        self.verification_tokens.remove(token);
        Ok((sub, contact.provider()))
    }

    /// Creates a user from a verified contact. Fields are already syntax-checked.
    pub fn sign_up(&mut self, form: SignUp, now: Now) -> Result<(String, &'static str), ApiError> {
        let verified = self.peek_verification_token(&form.verification_token, now)?;
        let contact = match form.contact {
            Some(c) if c.key() != verified.key() => {
                return Err(ApiError::invalid_argument(
                    "verification_token was issued for another phone number or email",
                ))
            }
            Some(c) => c,
            None => verified,
        };
        if self.contact_is_user(&contact) {
            return Err(ApiError::new(
                ErrorKind::AlreadyExists,
                format!("{} is already registered", contact.provider()),
            ));
        }
        if let Some(u) = &form.username {
            if self.by_username.contains_key(u) {
                return Err(ApiError::new(
                    ErrorKind::AlreadyExists,
                    "username is already taken",
                ));
            }
        }
        self.verification_tokens.remove(&form.verification_token);
        let sub = loop {
            let n: u64 =
                rand::thread_rng().gen_range(1_000_000_000_000_000_000..10_000_000_000_000_000_000);
            let s = n.to_string();
            if !self.users.contains_key(&s) {
                break s;
            }
        };
        let provider = contact.provider();
        let (phone_number, email) = match contact {
            Contact::Phone(p) => (Some(p), None),
            Contact::Email(e) => (None, Some(e)),
        };
        self.insert_user(User {
            sub: sub.clone(),
            username: form.username,
            password: form.password,
            name: form.name,
            email,
            phone_number,
            picture: form.picture,
            gender: form.gender,
            groups: Vec::new(),
            anonymous: false,
            created_at: rfc3339(now.unix),
            updated_at: rfc3339(now.unix),
        });
        Ok((sub, provider))
    }

    /// The anonymous user of a device, created on first use.
    pub fn anonymous_user(&mut self, device_id: &str, now: Now) -> String {
        if let Some(sub) = self.by_device.get(device_id) {
            if self.users.contains_key(sub) {
                return sub.clone();
            }
        }
        let sub = random_token(16);
        self.by_device.insert(device_id.to_owned(), sub.clone());
        self.users.insert(
            sub.clone(),
            User {
                sub: sub.clone(),
                username: None,
                password: None,
                name: None,
                email: None,
                phone_number: None,
                picture: None,
                gender: None,
                groups: Vec::new(),
                anonymous: true,
                created_at: rfc3339(now.unix),
                updated_at: rfc3339(now.unix),
            },
        );
        sub
    }

    fn issue(&mut self, sid: u64, access_exp: i64, now_unix: i64) -> Result<Issued, ApiError> {
        let session = self
            .sessions
            .get(&sid)
            .ok_or_else(|| ApiError::new(ErrorKind::InvalidGrant, "session ended"))?;
        let user = self
            .users
            .get(&session.sub)
            .ok_or_else(|| ApiError::new(ErrorKind::InvalidGrant, "user no longer exists"))?;
        let issued = Issued {
            sub: user.sub.clone(),
            jti: random_token(12),
            refresh_token: session.refresh_token.clone(),
            scope: if user.anonymous {
                "anonymous"
            } else {
                "user sso"
            },
            provider_type: session.provider_type.clone(),
            user_type: if user.anonymous {
                "anonymous"
            } else {
                "external"
            },
            groups: user.active_group_ids(now_unix),
        };
        self.issued_since_sweep += 1;
        if self.issued_since_sweep >= SWEEP_EVERY {
            self.issued_since_sweep = 0;
            // Entries whose token expired, or whose session ended, can never validate again.
            let sessions = &self.sessions;
            self.access
                .retain(|_, a| a.exp > now_unix && sessions.contains_key(&a.sid));
        }
        self.access.insert(
            issued.jti.clone(),
            AccessEntry {
                sid,
                exp: access_exp,
            },
        );
        Ok(issued)
    }

    /// Opens a session for `sub` on `device` (the caller's `x-device-id`) and issues its
    /// first access and refresh tokens.
    pub fn open_session(
        &mut self,
        sub: &str,
        provider_type: &str,
        device: Option<&str>,
        access_exp: i64,
        now: Now,
    ) -> Result<Issued, ApiError> {
        self.next_sid += 1;
        let sid = self.next_sid;
        let refresh_token = random_token(48);
        self.refresh.insert(refresh_token.clone(), sid);
        self.sessions.insert(
            sid,
            Session {
                sub: sub.to_owned(),
                refresh_token,
                refresh_expires: now.unix + REFRESH_TTL_SECS,
                provider_type: provider_type.to_owned(),
                device: device.map(str::to_owned),
                retired: VecDeque::new(),
            },
        );
        self.issue(sid, access_exp, now.unix)
    }

    /// Trades a refresh token for new tokens; the old refresh token retires. A retired
    /// token presented again ends its whole session (see the module docs).
    pub fn rotate(
        &mut self,
        refresh_token: &str,
        access_exp: i64,
        now: Now,
    ) -> Result<Issued, ApiError> {
        let invalid = || {
            ApiError::new(
                ErrorKind::InvalidGrant,
                "refresh token is invalid, used or expired",
            )
        };
        if let Some(sid) = self.retired.get(refresh_token).copied() {
            self.end_session(sid);
            return Err(ApiError::new(
                ErrorKind::InvalidGrant,
                "refresh token was already used; its session is revoked",
            ));
        }
        let sid = *self.refresh.get(refresh_token).ok_or_else(invalid)?;
        let session = self.sessions.get_mut(&sid).ok_or_else(invalid)?;
        if session.refresh_expires <= now.unix {
            self.end_session(sid);
            return Err(invalid());
        }
        let fresh = random_token(48);
        let old = std::mem::replace(&mut session.refresh_token, fresh.clone());
        session.refresh_expires = now.unix + REFRESH_TTL_SECS;
        session.retired.push_back(old.clone());
        if session.retired.len() > RETIRED_PER_SESSION {
            if let Some(forgotten) = session.retired.pop_front() {
                self.retired.remove(&forgotten);
            }
        }
        self.refresh.remove(&old);
        self.retired.insert(old, sid);
        self.refresh.insert(fresh, sid);
        self.issue(sid, access_exp, now.unix)
    }

    /// The bearer of a token whose signature and expiry were already checked: valid only
    /// if the token, its session and its user are all still alive.
    pub fn caller(&self, jti: &str, scope: &str) -> Option<Caller> {
        let entry = self.access.get(jti)?;
        let session = self.sessions.get(&entry.sid)?;
        self.users.get(&session.sub)?;
        Some(Caller {
            sub: session.sub.clone(),
            sid: entry.sid,
            scope: scope.to_owned(),
        })
    }

    /// Kills one access token.
    pub fn revoke_access(&mut self, jti: &str) {
        self.access.remove(jti);
    }

    /// Kills the session a refresh token belongs to. Unknown tokens are ignored.
    pub fn revoke_refresh(&mut self, refresh_token: &str) {
        if let Some(sid) = self.refresh.get(refresh_token).copied() {
            self.end_session(sid);
        }
    }

    /// Ends one session: its refresh token and every access token issued in it die.
    pub fn end_session(&mut self, sid: u64) {
        if let Some(s) = self.sessions.remove(&sid) {
            self.refresh.remove(&s.refresh_token);
            for token in &s.retired {
                self.retired.remove(token);
            }
        }
    }

    /// Ends every session of `sub` except `keep`.
    pub fn end_sessions_of(&mut self, sub: &str, keep: Option<u64>) {
        let doomed: Vec<u64> = self
            .sessions
            .iter()
            .filter(|(sid, s)| s.sub == sub && Some(**sid) != keep)
            .map(|(sid, _)| *sid)
            .collect();
        for sid in doomed {
            self.end_session(sid);
        }
    }

    /// Ends every session of `sub` opened from `device`; returns how many ended.
    pub fn end_device_sessions(&mut self, sub: &str, device: &str) -> usize {
        let doomed: Vec<u64> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.sub == sub && s.device.as_deref() == Some(device))
            .map(|(sid, _)| *sid)
            .collect();
        for sid in &doomed {
            self.end_session(*sid);
        }
        doomed.len()
    }

    /// Grants a single-use sudo token after the password (limited like sign-in) or a
    /// verification token was checked here.
    pub fn sudo(
        &mut self,
        sub: &str,
        password: Option<&str>,
        verification_token: Option<&str>,
        client: &Subject,
        now: Now,
    ) -> Result<String, ApiError> {
        let user = self.users.get(sub).ok_or_else(ApiError::unauthenticated)?;
        match (password, verification_token) {
            (Some(p), _) => {
                let correct = user.password.as_deref() == Some(p);
                let wrong = ApiError::new(ErrorKind::PermissionDenied, "wrong password");
                self.guess(&Subject::User(sub.to_owned()), client, correct, wrong, now)?;
            }
            (None, Some(t)) => {
                let contact = self.peek_verification_token(t, now)?;
                let owner = self.by_contact(&contact).map(|u| u.sub.as_str());
                if owner != Some(sub) {
                    return Err(ApiError::new(
                        ErrorKind::PermissionDenied,
                        "verification_token does not belong to this user",
                    ));
                }
                self.verification_tokens.remove(t);
            }
            (None, None) => {
                return Err(ApiError::invalid_argument(
                    "one of `password` or `verification_token` is required",
                ))
            }
        }
        let token = random_token(24);
        self.sudo.retain(|_, (_, exp)| *exp > now.instant);
        self.sudo
            .insert(token.clone(), (sub.to_owned(), now.instant + SUDO_TTL));
        Ok(token)
    }

    fn sudo_ok(&self, sub: &str, token: Option<&str>, now: Now) -> bool {
        token
            .and_then(|t| self.sudo.get(t))
            .is_some_and(|(owner, exp)| owner == sub && *exp > now.instant)
    }

    /// Sudo tokens are single-use: the operation they allowed has happened.
    fn spend_sudo(&mut self, token: Option<&str>) {
        if let Some(t) = token {
            self.sudo.remove(t);
        }
    }

    /// Changes the caller's password and signs out its other sessions. With a valid sudo
    /// token the token is spent; otherwise `old_password` is a guess, limited like
    /// sign-in.
    pub fn change_password(
        &mut self,
        caller: &Caller,
        new_password: &str,
        old_password: Option<&str>,
        sudo_token: Option<&str>,
        client: &Subject,
        now: Now,
    ) -> Result<(), ApiError> {
        let sudo = self.sudo_ok(&caller.sub, sudo_token, now);
        let current = self
            .users
            .get(&caller.sub)
            .ok_or_else(ApiError::unauthenticated)?
            .password
            .clone();
        let refused = || {
            ApiError::new(
                ErrorKind::PermissionDenied,
                "a valid sudo_token or the correct old_password is required",
            )
        };
        match old_password {
            _ if sudo => {}
            None => return Err(refused()),
            Some(old) => {
                let correct = current.as_deref() == Some(old);
                let subject = Subject::User(caller.sub.clone());
                self.guess(&subject, client, correct, refused(), now)?;
            }
        }
        check_password(new_password)?;
        if sudo {
            self.spend_sudo(sudo_token);
        }
        let user = self
            .users
            .get_mut(&caller.sub)
            .ok_or_else(ApiError::unauthenticated)?;
        user.password = Some(new_password.to_owned());
        user.updated_at = rfc3339(now.unix);
        self.end_sessions_of(&caller.sub, Some(caller.sid));
        Ok(())
    }

    /// Deletes the caller's account and every token it holds.
    pub fn delete_user(
        &mut self,
        sub: &str,
        sudo_token: Option<&str>,
        now: Now,
    ) -> Result<(), ApiError> {
        if !self.sudo_ok(sub, sudo_token, now) {
            return Err(ApiError::new(
                ErrorKind::PermissionDenied,
                "a valid sudo_token is required",
            ));
        }
        self.spend_sudo(sudo_token);
        self.end_sessions_of(sub, None);
        self.sudo.retain(|_, (owner, _)| owner != sub);
        if let Some(user) = self.users.remove(sub) {
            if let Some(u) = &user.username {
                self.by_username.remove(u);
            }
            if let Some(p) = user.phone_number {
                self.by_contact.remove(&Contact::Phone(p).key());
            }
            if let Some(e) = user.email {
                self.by_contact.remove(&Contact::Email(e).key());
            }
            self.by_device.retain(|_, s| s != sub);
        }
        Ok(())
    }
}

/// A new user's fields, syntax-checked by the handler.
#[derive(Debug)]
pub struct SignUp {
    pub contact: Option<Contact>,
    pub verification_token: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub name: Option<String>,
    pub gender: Option<String>,
    pub picture: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> Subject {
        Subject::client(None)
    }

    /// A store with one anonymous user and one session of it.
    fn one_session(now: Now) -> (Store, Issued) {
        let mut store = Store::default();
        let sub = store.anonymous_user("device-1234567890", now);
        let first = store
            .open_session(&sub, "anonymous", None, now.unix + 10, now)
            .unwrap();
        (store, first)
    }

    fn later(now: Now, secs: u64) -> Now {
        Now {
            unix: now.unix + secs as i64,
            instant: now.instant + Duration::from_secs(secs),
        }
    }

    #[test]
    fn verification_ids_and_tokens_expire_after_600_seconds() {
        let now = Now::current();
        let mut store = Store::default();
        let contact = Contact::Phone("+86 13800000000".into());
        let id = store.create_verification(contact.clone(), now);
        let err = store
            .verify(&id, true, &client(), later(now, 601))
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidArgument);

        let id = store.create_verification(contact, now);
        let token = store.verify(&id, true, &client(), later(now, 599)).unwrap();
        let form = |t: &str| SignUp {
            contact: None,
            verification_token: t.to_owned(),
            username: None,
            password: None,
            name: None,
            gender: None,
            picture: None,
        };
        let err = store
            .sign_up(form(&token), later(now, 599 + 601))
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidArgument);
        assert!(store.sign_up(form(&token), later(now, 700)).is_ok());
    }

    #[test]
    fn wrong_code_keeps_the_verification_usable() {
        let now = Now::current();
        let mut store = Store::default();
        let id = store.create_verification(Contact::Email("a@b.c".into()), now);
        assert!(store.verify(&id, false, &client(), now).is_err());
        assert!(store.verify(&id, true, &client(), now).is_ok());
        assert!(
            store.verify(&id, true, &client(), now).is_err(),
            "ids are single-use"
        );
    }

    fn alice(now: Now) -> Store {
        Store::seeded(
            &[SeedUser {
                username: "alice".into(),
                password: cloudbase_auth::Secret::new("password1"),
                ..SeedUser::default()
            }],
            AttemptLimits::default(),
            now,
        )
    }

    #[test]
    fn sudo_tokens_expire_after_900_seconds() {
        let now = Now::current();
        let mut store = alice(now);
        let sub = store
            .check_login("alice", "password1", &client(), now)
            .unwrap();
        let sudo = store
            .sudo(&sub, Some("password1"), None, &client(), now)
            .unwrap();
        assert!(store.sudo_ok(&sub, Some(&sudo), later(now, 899)));
        assert!(!store.sudo_ok(&sub, Some(&sudo), later(now, 901)));
    }

    #[test]
    fn a_sudo_token_is_spent_by_the_operation_it_allowed() {
        let now = Now::current();
        let mut store = alice(now);
        let sub = store
            .check_login("alice", "password1", &client(), now)
            .unwrap();
        let session = store
            .open_session(&sub, "username", None, now.unix + 10, now)
            .unwrap();
        let caller = store.caller(&session.jti, "user sso").unwrap();
        let sudo = store
            .sudo(&sub, Some("password1"), None, &client(), now)
            .unwrap();
        let change = |store: &mut Store, new: &str| {
            store.change_password(&caller, new, None, Some(&sudo), &client(), now)
        };
        assert_eq!(
            change(&mut store, "short").unwrap_err().kind,
            ErrorKind::InvalidPassword,
            "a refused change does not spend the token"
        );
        change(&mut store, "password2").unwrap();
        assert_eq!(
            change(&mut store, "password3").unwrap_err().kind,
            ErrorKind::PermissionDenied
        );
        assert!(store.delete_user(&sub, Some(&sudo), now).is_err());
    }

    #[test]
    fn a_replayed_refresh_token_ends_its_whole_family() {
        let now = Now::current();
        let (mut store, first) = one_session(now);
        let sub = first.sub.clone();
        let second = store
            .rotate(&first.refresh_token, now.unix + 10, now)
            .unwrap();
        let third = store
            .rotate(&second.refresh_token, now.unix + 10, now)
            .unwrap();
        assert!(store.caller(&third.jti, "anonymous").is_some());
        let replay = store
            .rotate(&first.refresh_token, now.unix + 10, now)
            .unwrap_err();
        assert_eq!(replay.kind, ErrorKind::InvalidGrant);
        assert!(store.caller(&third.jti, "anonymous").is_none());
        assert!(store.caller(&first.jti, "anonymous").is_none());
        assert!(store
            .rotate(&third.refresh_token, now.unix + 10, now)
            .is_err());
        assert!(store.retired.is_empty() && store.refresh.is_empty());
        // Another session of the same user is not part of the family.
        let other = store
            .open_session(&sub, "anonymous", None, now.unix + 10, now)
            .unwrap();
        assert!(store.caller(&other.jti, "anonymous").is_some());
    }

    #[test]
    fn retired_refresh_tokens_are_remembered_within_a_bound() {
        let now = Now::current();
        let (mut store, mut t) = one_session(now);
        for _ in 0..RETIRED_PER_SESSION + 10 {
            t = store.rotate(&t.refresh_token, now.unix + 10, now).unwrap();
        }
        assert_eq!(store.retired.len(), RETIRED_PER_SESSION);
    }

    #[test]
    fn refresh_tokens_rotate_and_expire() {
        let now = Now::current();
        let (mut store, first) = one_session(now);
        let second = store
            .rotate(&first.refresh_token, now.unix + 10, now)
            .unwrap();
        assert_eq!(
            store
                .rotate(&first.refresh_token, now.unix + 10, now)
                .unwrap_err()
                .kind,
            ErrorKind::InvalidGrant
        );
        let late = later(now, REFRESH_TTL_SECS as u64 + 1);
        assert!(store
            .rotate(&second.refresh_token, late.unix + 10, late)
            .is_err());
    }

    #[test]
    fn usernames_and_passwords_follow_cloudbase_rules() {
        assert!(valid_username("test@example.com"));
        assert!(valid_username("a b-c_d.e:f+g"));
        assert!(!valid_username("a"));
        assert!(!valid_username("名字"));
        assert!(!valid_username(&"x".repeat(49)));
        assert!(check_password("1234567").is_err());
        assert!(check_password("12345678").is_ok());
        assert!(check_password(&"x".repeat(65)).is_err());
    }
}
