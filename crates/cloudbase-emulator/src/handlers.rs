//! The `/auth/v1` endpoint handlers and the extractors that keep every rejection in the
//! envelope (request bodies: [`super::body`]).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::body::JsonBody;
use super::error::{ApiError, ErrorKind};
use super::jwt::Claims;
use super::limits::Subject;
use super::state::{self, Caller, Contact, Issued, Now, SignUp};
use super::Inner;
use cloudbase_auth::types::{
    Introspection, ProvidersResponse, SudoResponse, TokenResponse, UserProfile,
    VerificationResponse, VerifyResponse,
};

type AppState = State<Arc<Inner>>;
type ApiResult<T> = Result<Json<T>, ApiError>;

/// The query string as a map; a malformed one is a 400 `invalid_argument`.
pub struct Params(pub HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map(|Query(m)| Params(m))
            .map_err(|e| ApiError::invalid_argument(format!("invalid query string: {e}")))
    }
}

/// The caller's address, as the subject of the per-client attempt limits. Taken from the
/// connection, never from `X-Forwarded-For`, which any client can write.
pub struct Client(pub Subject);

impl<S: Send + Sync> FromRequestParts<S> for Client {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Infallible> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip());
        Ok(Client(Subject::client(peer)))
    }
}

/// The caller's `x-device-id`, when it sent a usable one.
fn device_id(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("x-device-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

impl Inner {
    /// The live caller behind an access token, if any.
    fn check_token(&self, token: &str, now: Now) -> Option<Caller> {
        let claims = self.signer.verify(token)?;
        if claims.exp <= now.unix {
            return None;
        }
        self.store().caller(&claims.jti, &claims.scope)
    }

    fn authenticate(&self, headers: &HeaderMap, now: Now) -> Result<Caller, ApiError> {
        bearer(headers)
            .and_then(|t| self.check_token(t, now))
            .ok_or_else(ApiError::unauthenticated)
    }

    fn token_response(&self, issued: Issued, now: Now) -> TokenResponse {
        let claims = Claims {
            iss: self.issuer.clone(),
            sub: issued.sub.clone(),
            aud: self.client_id.clone(),
            exp: now.unix + self.access_token_ttl,
            iat: now.unix,
            scope: issued.scope.to_owned(),
            project_id: self.project_id.clone(),
            provider_type: issued.provider_type,
            user_type: issued.user_type.to_owned(),
            jti: issued.jti,
        };
        TokenResponse {
            token_type: "Bearer".to_owned(),
            access_token: self.signer.sign(&claims),
            refresh_token: Some(issued.refresh_token),
            expires_in: self.access_token_ttl as u64,
            scope: issued.scope.to_owned(),
            sub: issued.sub,
            groups: issued.groups,
        }
    }

    fn access_exp(&self, now: Now) -> i64 {
        now.unix + self.access_token_ttl
    }
}

#[derive(Deserialize)]
pub struct SigninReq {
    username: Option<String>,
    password: Option<String>,
    verification_token: Option<String>,
}

/// `POST /signin`: username + password (attempts limited), or a verification token.
pub async fn signin(
    State(inner): AppState,
    Client(client): Client,
    headers: HeaderMap,
    JsonBody(req): JsonBody<SigninReq>,
) -> ApiResult<TokenResponse> {
    let now = Now::current();
    let issued = {
        let mut store = inner.store();
        let (sub, provider) = match (req.verification_token, req.username, req.password) {
            (Some(t), _, _) => store.login_by_verification(&t, now)?,
            (None, Some(u), Some(p)) => (store.check_login(&u, &p, &client, now)?, "username"),
            (None, None, _) => return Err(ApiError::missing("username")),
            (None, Some(_), None) => return Err(ApiError::missing("password")),
        };
        let device = device_id(&headers);
        store.open_session(&sub, provider, device, inner.access_exp(now), now)?
    };
    Ok(Json(inner.token_response(issued, now)))
}

#[derive(Deserialize)]
pub struct VerificationReq {
    phone_number: Option<String>,
    email: Option<String>,
    target: Option<String>,
}

/// `POST /verification`: "sends" a code (the configured one) to a phone or email.
pub async fn verification(
    State(inner): AppState,
    headers: HeaderMap,
    JsonBody(req): JsonBody<VerificationReq>,
) -> ApiResult<VerificationResponse> {
    let now = Now::current();
    let contact = Contact::from_fields(req.phone_number.as_deref(), req.email.as_deref())?;
    let target = req.target.as_deref().unwrap_or("ANY").to_ascii_uppercase();
    if target == "CUR_USER" {
        inner.authenticate(&headers, now)?;
    }
    let mut store = inner.store();
    let is_user = store.contact_is_user(&contact);
    match target.as_str() {
        "ANY" | "CUR_USER" => {}
        "USER" if !is_user => {
            return Err(ApiError::new(
                ErrorKind::NotFound,
                "no user has this contact",
            ))
        }
        "NOT_USER" if is_user => {
            return Err(ApiError::new(
                ErrorKind::AlreadyExists,
                "a user already has this contact",
            ))
        }
        "USER" | "NOT_USER" => {}
        other => {
            return Err(ApiError::invalid_argument(format!(
                "target {other:?} is not one of ANY, USER, NOT_USER, CUR_USER"
            )))
        }
    }
    let verification_id = store.create_verification(contact, now);
    Ok(Json(VerificationResponse {
        verification_id,
        expires_in: state::VERIFICATION_TTL.as_secs(),
        is_user,
    }))
}

#[derive(Deserialize)]
pub struct VerifyReq {
    verification_id: Option<String>,
    verification_code: Option<String>,
}

/// `POST /verification/verify`: code -> verification token (attempts limited).
pub async fn verify(
    State(inner): AppState,
    Client(client): Client,
    JsonBody(req): JsonBody<VerifyReq>,
) -> ApiResult<VerifyResponse> {
    let id = req
        .verification_id
        .ok_or(ApiError::missing("verification_id"))?;
    let code = req
        .verification_code
        .ok_or(ApiError::missing("verification_code"))?;
    let code_ok = code == inner.verification_code;
    let verification_token = inner
        .store()
        .verify(&id, code_ok, &client, Now::current())?;
    Ok(Json(VerifyResponse {
        verification_token,
        expires_in: state::VERIFICATION_TTL.as_secs(),
    }))
}

#[derive(Deserialize)]
pub struct SignupReq {
    phone_number: Option<String>,
    email: Option<String>,
    verification_token: Option<String>,
    username: Option<String>,
    password: Option<String>,
    name: Option<String>,
    gender: Option<String>,
    picture: Option<String>,
}

/// `POST /signup`: creates a user from a verified phone or email.
pub async fn signup(
    State(inner): AppState,
    headers: HeaderMap,
    JsonBody(req): JsonBody<SignupReq>,
) -> ApiResult<TokenResponse> {
    let now = Now::current();
    let verification_token = req
        .verification_token
        .ok_or(ApiError::missing("verification_token"))?;
    let contact = match (&req.phone_number, &req.email) {
        (None, None) => None,
        (p, e) => Some(Contact::from_fields(p.as_deref(), e.as_deref())?),
    };
    if let Some(u) = &req.username {
        if !state::valid_username(u) {
            return Err(ApiError::invalid_argument(
                "username must be 2 to 48 characters of A-Z a-z 0-9 space - _ . : + @",
            ));
        }
    }
    if let Some(p) = &req.password {
        state::check_password(p)?;
    }
    let form = SignUp {
        contact,
        verification_token,
        username: req.username,
        password: req.password,
        name: req.name,
        gender: req.gender,
        picture: req.picture,
    };
    let issued = {
        let mut store = inner.store();
        let (sub, provider) = store.sign_up(form, now)?;
        let device = device_id(&headers);
        store.open_session(&sub, provider, device, inner.access_exp(now), now)?
    };
    Ok(Json(inner.token_response(issued, now)))
}

/// `POST /signin/anonymously`: one anonymous user per `x-device-id`.
pub async fn anonymous(State(inner): AppState, headers: HeaderMap) -> ApiResult<TokenResponse> {
    if !inner.allow_anonymous {
        return Err(ApiError::new(
            ErrorKind::Unimplemented,
            // The JS SDK recognises this wording ("anonymous login is not enabled") and
            // tells the developer to enable the provider in the console.
            "anonymous login is not enabled for this environment",
        ));
    }
    let device = device_id(&headers)
        .ok_or_else(|| ApiError::invalid_argument("the x-device-id header is required"))?;
    let now = Now::current();
    let issued = {
        let mut store = inner.store();
        let sub = store.anonymous_user(device, now);
        store.open_session(&sub, "anonymous", Some(device), inner.access_exp(now), now)?
    };
    Ok(Json(inner.token_response(issued, now)))
}

#[derive(Deserialize)]
pub struct TokenReq {
    grant_type: Option<String>,
    refresh_token: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
}

/// `POST /token`: refresh-token grant; the refresh token rotates, and a rotated-out one
/// presented again ends its session. A `client_id` (body, query or Basic) must be this
/// environment's: 401 `invalid_client` otherwise.
pub async fn token(
    State(inner): AppState,
    JsonBody(req): JsonBody<TokenReq>,
) -> ApiResult<TokenResponse> {
    if let Some(id) = req.client_id.as_deref().filter(|id| !id.is_empty()) {
        if !inner.is_our_client(id) {
            return Err(ApiError::invalid_client());
        }
    }
    // The JS SDK sends `client_secret: ""`: only a non-empty secret is checked.
    if let Some(secret) = req.client_secret.as_deref().filter(|s| !s.is_empty()) {
        if secret != inner.client_secret.expose() {
            return Err(ApiError::invalid_client());
        }
    }
    match req.grant_type.as_deref() {
        Some("refresh_token") => {}
        Some(other) => {
            return Err(ApiError::invalid_argument(format!(
                "unsupported grant_type {other:?}"
            )))
        }
        None => return Err(ApiError::missing("grant_type")),
    }
    let refresh = req
        .refresh_token
        .ok_or(ApiError::missing("refresh_token"))?;
    let now = Now::current();
    let issued = inner.store().rotate(&refresh, inner.access_exp(now), now)?;
    Ok(Json(inner.token_response(issued, now)))
}

/// `GET /token/introspect`: the token from `?token=` or the Bearer header.
pub async fn introspect(
    State(inner): AppState,
    Params(params): Params,
    headers: HeaderMap,
) -> Json<Introspection> {
    let token = params
        .get("token")
        .map(String::as_str)
        .or_else(|| bearer(&headers));
    let answer = token
        .and_then(|t| inner.check_token(t, Now::current()))
        .map(|c| Introspection {
            token_type: Some("Bearer".to_owned()),
            client_id: Some(inner.client_id.clone()),
            sub: Some(c.sub),
            scope: Some(c.scope),
        })
        .unwrap_or_default();
    Json(answer)
}

#[derive(Deserialize)]
pub struct RevokeReq {
    token: Option<String>,
}

/// `POST /revoke`: kills an access token, or a refresh token and its session.
pub async fn revoke(
    State(inner): AppState,
    headers: HeaderMap,
    JsonBody(req): JsonBody<RevokeReq>,
) -> ApiResult<Value> {
    let token = req
        .token
        .filter(|t| !t.is_empty())
        .or_else(|| bearer(&headers).map(str::to_owned))
        .ok_or_else(|| ApiError::invalid_argument("no token to revoke"))?;
    // The signature is checked so nobody can revoke by forging a jti; expiry is not.
    match inner.signer.verify(&token) {
        Some(claims) => inner.store().revoke_access(&claims.jti),
        None => inner.store().revoke_refresh(&token),
    }
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
pub struct SignoutReq {
    redirect_uri: Option<String>,
}

/// `POST /user/signout` (Bearer): what the JS SDK's `signOut({redirect_uri, state})`
/// calls, rather than `/revoke`. Ends the caller's session, refresh token included, and
/// answers `{redirect_uri}` (the one given, since there is no identity provider to leave)
/// or `{}`.
pub async fn signout(
    State(inner): AppState,
    headers: HeaderMap,
    JsonBody(req): JsonBody<SignoutReq>,
) -> ApiResult<Value> {
    let caller = inner.authenticate(&headers, Now::current())?;
    inner.store().end_session(caller.sid);
    Ok(Json(match req.redirect_uri.filter(|u| !u.is_empty()) {
        Some(uri) => json!({ "redirect_uri": uri }),
        None => json!({}),
    }))
}

/// `DELETE /user/revoke/all` (Bearer): the SDK's `revokeAllDevices()`. Ends every
/// session of the caller's user, the caller's own included, and answers `{}`.
pub async fn revoke_all(State(inner): AppState, headers: HeaderMap) -> ApiResult<Value> {
    let caller = inner.authenticate(&headers, Now::current())?;
    inner.store().end_sessions_of(&caller.sub, None);
    Ok(Json(json!({})))
}

/// `DELETE /user/authorized/devices/{device_id}` (Bearer): the SDK's
/// `revokeDevice({device_id})`. Ends the caller's sessions opened with that `x-device-id`
/// (none is not an error: the device is signed out either way) and answers `{}`.
pub async fn revoke_device(
    State(inner): AppState,
    device: Result<Path<String>, axum::extract::rejection::PathRejection>,
    headers: HeaderMap,
) -> ApiResult<Value> {
    let Path(device) =
        device.map_err(|e| ApiError::invalid_argument(format!("invalid device id: {e}")))?;
    let caller = inner.authenticate(&headers, Now::current())?;
    inner.store().end_device_sessions(&caller.sub, &device);
    Ok(Json(json!({})))
}

/// `GET /user/me`.
pub async fn user_me(State(inner): AppState, headers: HeaderMap) -> ApiResult<UserProfile> {
    let caller = inner.authenticate(&headers, Now::current())?;
    let profile = inner
        .store()
        .user(&caller.sub)
        .map(state::User::profile)
        .ok_or_else(ApiError::unauthenticated)?;
    Ok(Json(profile))
}

#[derive(Deserialize)]
pub struct SudoReq {
    password: Option<String>,
    verification_token: Option<String>,
}

/// `POST /user/sudo`: password (attempts limited) or verification token -> single-use
/// sudo token (900 s).
pub async fn sudo(
    State(inner): AppState,
    Client(client): Client,
    headers: HeaderMap,
    JsonBody(req): JsonBody<SudoReq>,
) -> ApiResult<SudoResponse> {
    let now = Now::current();
    let caller = inner.authenticate(&headers, now)?;
    let sudo_token = inner.store().sudo(
        &caller.sub,
        req.password.as_deref(),
        req.verification_token.as_deref(),
        &client,
        now,
    )?;
    Ok(Json(SudoResponse {
        sudo_token,
        expires_in: state::SUDO_TTL.as_secs(),
    }))
}

#[derive(Deserialize)]
pub struct PasswordReq {
    new_password: Option<String>,
    old_password: Option<String>,
    sudo_token: Option<String>,
}

/// `PATCH /user/password`: needs a sudo token (body or query; spent) or the old password
/// (attempts limited); signs out the user's other sessions.
pub async fn password(
    State(inner): AppState,
    Client(client): Client,
    Params(params): Params,
    headers: HeaderMap,
    JsonBody(req): JsonBody<PasswordReq>,
) -> ApiResult<Value> {
    let now = Now::current();
    let caller = inner.authenticate(&headers, now)?;
    let new_password = req.new_password.ok_or(ApiError::missing("new_password"))?;
    let sudo_token = req.sudo_token.or_else(|| params.get("sudo_token").cloned());
    inner.store().change_password(
        &caller,
        &new_password,
        req.old_password.as_deref(),
        sudo_token.as_deref(),
        &client,
        now,
    )?;
    Ok(Json(json!({})))
}

/// `DELETE /user/me?sudo_token=`: deletes the account and all its tokens; spends the
/// sudo token.
pub async fn delete_user(
    State(inner): AppState,
    Params(params): Params,
    headers: HeaderMap,
) -> ApiResult<Value> {
    let now = Now::current();
    let caller = inner.authenticate(&headers, now)?;
    inner.store().delete_user(
        &caller.sub,
        params.get("sudo_token").map(String::as_str),
        now,
    )?;
    Ok(Json(json!({})))
}

/// `GET /user/provider`: the sign-in methods bound to the user.
pub async fn providers(State(inner): AppState, headers: HeaderMap) -> ApiResult<ProvidersResponse> {
    let caller = inner.authenticate(&headers, Now::current())?;
    let data = inner
        .store()
        .user(&caller.sub)
        .map(state::User::provider_list)
        .ok_or_else(ApiError::unauthenticated)?;
    Ok(Json(ProvidersResponse {
        total: data.len() as u64,
        data,
    }))
}

/// `GET /healthz`.
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

pub async fn not_found() -> ApiError {
    ApiError::new(ErrorKind::NotFound, "no such endpoint")
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorKind::MethodNotAllowed,
        "method not allowed on this endpoint",
    )
}
