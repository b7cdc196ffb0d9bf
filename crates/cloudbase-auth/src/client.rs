//! The typed CloudBase Auth v2 client: one async method per endpoint, over one pooled
//! `reqwest` client.
//!
//! Every call sends `x-request-id`, `x-device-id` and `Accept: application/json`; calls
//! that are not made on a user's behalf carry the client credentials (HTTP Basic, when a
//! secret is configured) and `?client_id=`. Answers are sorted into typed bodies or an
//! [`Error`].
//!
//! Trade-offs: the client is deliberately thin. It retries only what is certainly safe
//! (a GET whose connection could not be opened, see [`Client::introspect`]), follows no
//! redirects (a redirect would carry credentials somewhere we did not choose), and caches
//! nothing: caching belongs to the caller, which knows token lifetimes (the gateway keeps
//! a validation cache). Idle connections are kept generously because a gateway introspects
//! at request rate.

use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{Method, StatusCode};
use reqwest::Url;
use serde::de::DeserializeOwned;
use serde::{Deserialize as _, Serialize};

use crate::builder::{ClientBuilder, RootCerts};
use crate::error::{Error, InvalidBody, SetupError};
use crate::types::{
    ChangePasswordRequest, ErrorBody, Introspection, ProvidersResponse, RefreshRequest,
    RevokeRequest, SigninRequest, SignupRequest, SudoRequest, SudoResponse, TokenResponse,
    UserProfile, VerificationRequest, VerificationResponse, VerifyRequest, VerifyResponse,
};
use crate::{IntrospectAuth, Secret};

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_DEVICE_ID: HeaderName = HeaderName::from_static("x-device-id");
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");

/// Largest response body read. CloudBase's biggest answers (a profile, a token response
/// with a 4 KiB access token) are a few KiB; anything near this is not CloudBase.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// Idle connections kept per host: a gateway introspects at request rate, and a new TLS
/// connection per call would cost more than the call.
const POOL_MAX_IDLE_PER_HOST: usize = 1024;

/// Per-call options.
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    /// Sent as `x-request-id`; default a fresh UUID v4. Propagate the incoming request's
    /// id so CloudBase's logs and ours can be matched. An invalid header value is replaced
    /// by a fresh UUID.
    pub request_id: Option<String>,
    /// Sent as `x-device-id`; default the client's ([`ClientBuilder::device_id`]). An
    /// invalid header value falls back to the default.
    pub device_id: Option<String>,
    /// Sent as `traceparent` (W3C Trace Context) when set and a valid header value: the
    /// caller's span, so CloudBase's spans join the caller's trace.
    pub traceparent: Option<String>,
    /// Sent as `tracestate` with `traceparent`, when set and valid.
    pub tracestate: Option<String>,
}

/// Client of CloudBase Auth v2. Cheap to clone: clones share the connection pool.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    base_url: String,
    /// `base_url` parsed once; each call copies it and sets the path.
    base: Url,
    client_id: String,
    client_secret: Option<Secret>,
    /// `Basic base64(client_id:client_secret)`, sensitive; `None` when there is no secret.
    basic: Option<HeaderValue>,
    device_id: HeaderValue,
    introspect_auth: IntrospectAuth,
    timeout: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let i = &self.inner;
        f.debug_struct("Client")
            .field("base_url", &i.base_url)
            .field("client_id", &i.client_id)
            .field("client_secret", &i.client_secret)
            .field("device_id", &i.device_id)
            .field("introspect_auth", &i.introspect_auth)
            .field("timeout", &i.timeout)
            .finish()
    }
}

/// How a call authenticates.
#[derive(Clone, Copy)]
enum Auth<'a> {
    /// Not on a user's behalf: Basic client credentials (if any) and `?client_id=`.
    Client,
    /// Introspect's "client" form: as `Client`, plus `?token=`.
    ClientWithToken(&'a str),
    /// On a user's behalf: `Authorization: Bearer <token>`, nothing else.
    Bearer(&'a str),
}

impl Client {
    /// A builder for a client of the Auth v2 API at `base_url` (the URL ending in
    /// `/auth/v1`, e.g. `https://{env_id}.{region}.tcb-api.tencentcloudapi.com/auth/v1`).
    pub fn builder(base_url: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(base_url)
    }

    pub(crate) fn from_builder(b: ClientBuilder) -> Result<Client, Error> {
        let base_url = b.base_url.trim_end_matches('/').to_owned();
        let base = Url::parse(&base_url)
            .ok()
            .filter(|u| !u.cannot_be_a_base() && matches!(u.scheme(), "http" | "https"))
            .ok_or(Error::Setup(SetupError::BaseUrl))?;
        let device_id =
            HeaderValue::from_str(&b.device_id).map_err(|_| Error::Setup(SetupError::DeviceId))?;
        let basic = match &b.client_secret {
            None => None,
            Some(secret) => Some(basic_auth(&b.client_id, secret.expose())?),
        };
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls_client_config(&b.root_certs).map_err(Error::Setup)?)
            .timeout(b.timeout)
            .connect_timeout(b.timeout)
            .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(b.user_agent)
            .build()
            .map_err(|e| Error::Setup(SetupError::Http(e.without_url())))?;
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                base_url,
                base,
                client_id: b.client_id,
                client_secret: b.client_secret,
                basic,
                device_id,
                introspect_auth: b.introspect_auth,
                timeout: b.timeout,
            }),
        })
    }

    /// The configured base URL, ending in `/auth/v1`.
    pub fn base_url(&self) -> &str {
        &self.inner.base_url
    }

    /// `POST /signin` with a username (or email, or phone number) and password.
    pub async fn signin_password(
        &self,
        username: &str,
        password: &str,
        opts: &CallOptions,
    ) -> Result<TokenResponse, Error> {
        let body = SigninRequest {
            username: Some(username.to_owned()),
            password: Some(password.to_owned()),
            verification_token: None,
        };
        self.json(Method::POST, "/signin", Auth::Client, Some(&body), opts)
            .await
    }

    /// `POST /signin` with a verification token from [`Client::verify`].
    pub async fn signin_verification_token(
        &self,
        verification_token: &str,
        opts: &CallOptions,
    ) -> Result<TokenResponse, Error> {
        let body = SigninRequest {
            verification_token: Some(verification_token.to_owned()),
            ..SigninRequest::default()
        };
        self.json(Method::POST, "/signin", Auth::Client, Some(&body), opts)
            .await
    }

    /// `POST /verification`: sends a code to a phone number or email. With
    /// `req.access_token` set (needed for `target = CUR_USER`) the call is made as that
    /// user instead of with client credentials.
    pub async fn send_verification(
        &self,
        req: &VerificationRequest,
        opts: &CallOptions,
    ) -> Result<VerificationResponse, Error> {
        let auth = match &req.access_token {
            Some(token) => Auth::Bearer(token),
            None => Auth::Client,
        };
        self.json(Method::POST, "/verification", auth, Some(req), opts)
            .await
    }

    /// `POST /verification/verify`: exchanges the code for a verification token.
    pub async fn verify(
        &self,
        verification_id: &str,
        verification_code: &str,
        opts: &CallOptions,
    ) -> Result<VerifyResponse, Error> {
        let body = VerifyRequest {
            verification_id: verification_id.to_owned(),
            verification_code: verification_code.to_owned(),
        };
        let path = "/verification/verify";
        self.json(Method::POST, path, Auth::Client, Some(&body), opts)
            .await
    }

    /// `POST /signup`.
    pub async fn signup(
        &self,
        req: &SignupRequest,
        opts: &CallOptions,
    ) -> Result<TokenResponse, Error> {
        self.json(Method::POST, "/signup", Auth::Client, Some(req), opts)
            .await
    }

    /// `POST /signin/anonymously`. CloudBase ties the anonymous user to `x-device-id`.
    pub async fn signin_anonymously(&self, opts: &CallOptions) -> Result<TokenResponse, Error> {
        let body = serde_json::Map::new();
        let path = "/signin/anonymously";
        self.json(Method::POST, path, Auth::Client, Some(&body), opts)
            .await
    }

    /// `POST /token` with `grant_type = refresh_token`. CloudBase rotates refresh tokens:
    /// the one passed here stops working once this succeeds.
    pub async fn refresh(
        &self,
        refresh_token: &str,
        opts: &CallOptions,
    ) -> Result<TokenResponse, Error> {
        let body = RefreshRequest {
            grant_type: "refresh_token".to_owned(),
            refresh_token: refresh_token.to_owned(),
        };
        self.json(Method::POST, "/token", Auth::Client, Some(&body), opts)
            .await
    }

    /// `GET /token/introspect` in the client's form ([`ClientBuilder::introspect_auth`]).
    /// An invalid, expired or revoked token is `Ok` with an inactive [`Introspection`].
    ///
    /// Retry policy (all GET calls: this, [`Client::user_me`], [`Client::list_providers`]):
    /// retried once when the connection could not be opened, because then the request
    /// never reached CloudBase and a dead pooled connection is the usual cause. Nothing
    /// else is retried: after a timeout or a 5xx, a second try doubles the wait on an
    /// unhealthy service, and the caller has its own answer (a gateway: a stale cache entry,
    /// 503).
    pub async fn introspect(
        &self,
        token: &str,
        opts: &CallOptions,
    ) -> Result<Introspection, Error> {
        self.introspect_with(token, self.inner.introspect_auth, opts)
            .await
    }

    /// `GET /token/introspect` in the given form: `Bearer` (documented) or `Client`
    /// (Basic client credentials and `?token=`). Retried as [`Client::introspect`].
    pub async fn introspect_with(
        &self,
        token: &str,
        mode: IntrospectAuth,
        opts: &CallOptions,
    ) -> Result<Introspection, Error> {
        let auth = match mode {
            IntrospectAuth::Bearer => Auth::Bearer(token),
            IntrospectAuth::Client => Auth::ClientWithToken(token),
        };
        self.json(Method::GET, "/token/introspect", auth, None::<&()>, opts)
            .await
    }

    /// `POST /revoke` with the token as Bearer and in the body: signs the session out.
    pub async fn revoke(&self, token: &str, opts: &CallOptions) -> Result<(), Error> {
        let body = RevokeRequest {
            token: token.to_owned(),
        };
        self.empty(
            Method::POST,
            "/revoke",
            Auth::Bearer(token),
            Some(&body),
            opts,
        )
        .await
    }

    /// `GET /user/me`. Retried as [`Client::introspect`].
    pub async fn user_me(
        &self,
        access_token: &str,
        opts: &CallOptions,
    ) -> Result<UserProfile, Error> {
        let auth = Auth::Bearer(access_token);
        self.json(Method::GET, "/user/me", auth, None::<&()>, opts)
            .await
    }

    /// `POST /user/sudo` with the user's password: a sudo token for sensitive changes.
    pub async fn sudo_password(
        &self,
        access_token: &str,
        password: &str,
        opts: &CallOptions,
    ) -> Result<SudoResponse, Error> {
        let body = SudoRequest {
            password: Some(password.to_owned()),
            verification_token: None,
        };
        let auth = Auth::Bearer(access_token);
        self.json(Method::POST, "/user/sudo", auth, Some(&body), opts)
            .await
    }

    /// `POST /user/sudo` with a verification token.
    pub async fn sudo_verification_token(
        &self,
        access_token: &str,
        verification_token: &str,
        opts: &CallOptions,
    ) -> Result<SudoResponse, Error> {
        let body = SudoRequest {
            password: None,
            verification_token: Some(verification_token.to_owned()),
        };
        let auth = Auth::Bearer(access_token);
        self.json(Method::POST, "/user/sudo", auth, Some(&body), opts)
            .await
    }

    /// `PATCH /user/password`. CloudBase signs the user's other sessions out.
    pub async fn change_password(
        &self,
        access_token: &str,
        req: &ChangePasswordRequest,
        opts: &CallOptions,
    ) -> Result<(), Error> {
        let auth = Auth::Bearer(access_token);
        self.empty(Method::PATCH, "/user/password", auth, Some(req), opts)
            .await
    }

    /// `DELETE /user/me?sudo_token=`.
    pub async fn delete_user(
        &self,
        access_token: &str,
        sudo_token: &str,
        opts: &CallOptions,
    ) -> Result<(), Error> {
        let mut url = self.url("/user/me");
        url.query_pairs_mut().append_pair("sudo_token", sudo_token);
        let auth = Auth::Bearer(access_token);
        let response = self
            .send(Method::DELETE, url, auth, None::<&()>, opts)
            .await?;
        read_body(response).await.map(drop)
    }

    /// `GET /user/provider`: the sign-in methods bound to the user. Retried as
    /// [`Client::introspect`].
    pub async fn list_providers(
        &self,
        access_token: &str,
        opts: &CallOptions,
    ) -> Result<ProvidersResponse, Error> {
        let auth = Auth::Bearer(access_token);
        self.json(Method::GET, "/user/provider", auth, None::<&()>, opts)
            .await
    }

    /// A call whose 2xx body is `T`.
    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        auth: Auth<'_>,
        body: Option<&impl Serialize>,
        opts: &CallOptions,
    ) -> Result<T, Error> {
        let response = self.send(method, self.url(path), auth, body, opts).await?;
        let (status, bytes) = read_body(response).await?;
        parse_success(status, &bytes)
    }

    /// A call whose 2xx body (`{}` in practice) carries nothing: any body is accepted.
    async fn empty(
        &self,
        method: Method,
        path: &str,
        auth: Auth<'_>,
        body: Option<&impl Serialize>,
        opts: &CallOptions,
    ) -> Result<(), Error> {
        let response = self.send(method, self.url(path), auth, body, opts).await?;
        read_body(response).await.map(drop)
    }

    fn url(&self, path: &str) -> Url {
        let mut url = self.inner.base.clone();
        let joined = format!("{}{path}", url.path().trim_end_matches('/'));
        url.set_path(&joined);
        url
    }

    /// Builds and sends the request, retrying a GET once on a connect error.
    async fn send(
        &self,
        method: Method,
        mut url: Url,
        auth: Auth<'_>,
        body: Option<&impl Serialize>,
        opts: &CallOptions,
    ) -> Result<reqwest::Response, Error> {
        let inner = &*self.inner;
        let mut headers = http::HeaderMap::with_capacity(6);
        headers.insert(ACCEPT, APPLICATION_JSON);
        headers.insert(X_REQUEST_ID, request_id(opts));
        let device_id = opts
            .device_id
            .as_deref()
            .and_then(|d| HeaderValue::from_str(d).ok())
            .unwrap_or_else(|| inner.device_id.clone());
        headers.insert(X_DEVICE_ID, device_id);
        for (name, value) in [
            (TRACEPARENT, &opts.traceparent),
            (TRACESTATE, &opts.tracestate),
        ] {
            if let Some(value) = value.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
                headers.insert(name, value);
            }
        }
        match auth {
            Auth::Bearer(token) => {
                headers.insert(AUTHORIZATION, bearer(token)?);
            }
            Auth::Client | Auth::ClientWithToken(_) => {
                if let Some(basic) = &inner.basic {
                    headers.insert(AUTHORIZATION, basic.clone());
                }
                let mut query = url.query_pairs_mut();
                if !inner.client_id.is_empty() {
                    query.append_pair("client_id", &inner.client_id);
                }
                if let Auth::ClientWithToken(token) = auth {
                    query.append_pair("token", token);
                }
            }
        }
        let mut request = reqwest::Request::new(method.clone(), url);
        if let Some(body) = body {
            let bytes = serde_json::to_vec(body).map_err(|_| Error::InvalidInput {
                what: "request body",
            })?;
            headers.insert(CONTENT_TYPE, APPLICATION_JSON);
            *request.body_mut() = Some(bytes.into());
        }
        *request.headers_mut() = headers;

        let retry = if method == Method::GET {
            request.try_clone()
        } else {
            None
        };
        match (inner.http.execute(request).await, retry) {
            (Ok(response), _) => Ok(response),
            (Err(e), Some(again)) if e.is_connect() => {
                tracing::debug!(error = %e.without_url(), "CloudBase connect failed; retrying once");
                inner.http.execute(again).await.map_err(Error::from_reqwest)
            }
            (Err(e), _) => Err(Error::from_reqwest(e)),
        }
    }
}

/// Reads the body (at most [`MAX_BODY_BYTES`]) and turns an error status into an
/// [`Error`]. Returns the status and body of a 2xx answer.
async fn read_body(mut response: reqwest::Response) -> Result<(StatusCode, Vec<u8>), Error> {
    let status = response.status();
    let too_large = || Error::InvalidResponse {
        status,
        source: InvalidBody::TooLarge {
            limit: MAX_BODY_BYTES,
        },
    };
    if response
        .content_length()
        .is_some_and(|n| n > MAX_BODY_BYTES as u64)
    {
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(Error::from_reqwest)? {
        if bytes.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(too_large());
        }
        bytes.extend_from_slice(&chunk);
    }
    if status.is_success() {
        Ok((status, bytes))
    } else {
        Err(parse_error(status, &bytes))
    }
}

/// Parses a 2xx body as `T`.
fn parse_success<T: DeserializeOwned>(status: StatusCode, bytes: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(bytes).map_err(|e| Error::InvalidResponse {
        status,
        source: InvalidBody::from_json(&e),
    })
}

/// Turns a non-2xx answer into [`Error::Api`] when it carries an error envelope (the auth
/// service's `error`, or the API gateway's `code`), else [`Error::InvalidResponse`].
fn parse_error(status: StatusCode, bytes: &[u8]) -> Error {
    /// The API gateway's envelope, which the SDKs read as `code` -> `error`.
    #[derive(serde::Deserialize)]
    struct GatewayBody {
        code: String,
        #[serde(default)]
        message: String,
    }

    let value: serde_json::Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(e) => {
            return Error::InvalidResponse {
                status,
                source: InvalidBody::from_json(&e),
            }
        }
    };
    if let Ok(b) = ErrorBody::deserialize(&value) {
        return Error::Api {
            status,
            error: b.error,
            error_code: b.error_code,
            error_description: b.error_description,
        };
    }
    if let Ok(b) = GatewayBody::deserialize(&value) {
        return Error::Api {
            status,
            error: b.code,
            error_code: 0,
            error_description: b.message,
        };
    }
    Error::InvalidResponse {
        status,
        source: InvalidBody::NoErrorEnvelope,
    }
}

fn request_id(opts: &CallOptions) -> HeaderValue {
    opts.request_id
        .as_deref()
        .and_then(|id| HeaderValue::from_str(id).ok())
        .unwrap_or_else(|| {
            HeaderValue::try_from(uuid::Uuid::new_v4().to_string())
                .unwrap_or(HeaderValue::from_static("cloudbase-auth"))
        })
}

fn bearer(token: &str) -> Result<HeaderValue, Error> {
    let mut value =
        HeaderValue::try_from(format!("Bearer {token}")).map_err(|_| Error::InvalidInput {
            what: "access token",
        })?;
    value.set_sensitive(true);
    Ok(value)
}

fn basic_auth(client_id: &str, secret: &str) -> Result<HeaderValue, Error> {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{client_id}:{secret}"));
    let mut value =
        HeaderValue::try_from(format!("Basic {encoded}")).map_err(|_| Error::InvalidInput {
            what: "client credentials",
        })?;
    value.set_sensitive(true);
    Ok(value)
}

/// Platform roots plus the extra ones, ring as the crypto provider (the one the crate
/// builds): the TLS of this client, and of any other HTTPS client that should trust what
/// it trusts (the gateway's span exporter). PEM is read with `rustls-pki-types`.
pub fn tls_client_config(extra: &[RootCerts]) -> Result<rustls::ClientConfig, SetupError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;

    let mut roots = rustls::RootCertStore::empty();
    // Unreadable platform certificates are skipped: an http:// base URL (the emulator)
    // needs none, and an https:// one fails its handshake with a clear error.
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    for certs in extra {
        let origin = || certs.origin();
        let read;
        let pem: &[u8] = match certs {
            RootCerts::Pem(pem) => pem,
            RootCerts::PemFile(path) => {
                read = std::fs::read(path).map_err(|source| SetupError::ReadRootCerts {
                    path: path.clone(),
                    source,
                })?;
                &read
            }
        };
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|source| SetupError::RootCertsPem {
                origin: origin(),
                source,
            })?;
            roots
                .add(cert)
                .map_err(|source| SetupError::BadCertificate {
                    origin: origin(),
                    source,
                })?;
            added += 1;
        }
        if added == 0 {
            return Err(SetupError::NoCertificates { origin: origin() });
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(SetupError::Tls)?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builder() -> ClientBuilder {
        Client::builder("http://127.0.0.1:9/auth/v1").client_id("cid")
    }

    #[test]
    fn error_envelope_becomes_api_error() {
        let e = parse_error(
            StatusCode::BAD_REQUEST,
            br#"{"error":"invalid_grant","error_code":4,"error_description":"expired","details":[1]}"#,
        );
        match e {
            Error::Api {
                status,
                ref error,
                error_code,
                ref error_description,
            } => {
                assert_eq!(status, StatusCode::BAD_REQUEST);
                assert_eq!(error, "invalid_grant");
                assert_eq!(error_code, 4);
                assert_eq!(error_description, "expired");
            }
            other => panic!("{other:?}"),
        }
        assert!(!e.is_server_side());
        assert!(!e.is_unauthenticated());
    }

    #[test]
    fn gateway_envelope_maps_code_to_error() {
        let e = parse_error(
            StatusCode::UNAUTHORIZED,
            br#"{"code":"INVALID_ACCESS_TOKEN","message":"bad","requestId":"r"}"#,
        );
        assert_eq!(e.api_error(), Some("INVALID_ACCESS_TOKEN"));
        assert!(e.is_unauthenticated());
    }

    #[test]
    fn html_error_page_is_invalid_response_and_server_side() {
        let e = parse_error(StatusCode::BAD_GATEWAY, b"<html>bad gateway</html>");
        assert!(matches!(
            e,
            Error::InvalidResponse {
                source: InvalidBody::NotJson { .. },
                ..
            }
        ));
        assert_eq!(e.status(), Some(StatusCode::BAD_GATEWAY));
        assert!(e.is_server_side());
        let e = parse_error(StatusCode::BAD_REQUEST, br#"{"message":"no code"}"#);
        assert!(matches!(
            e,
            Error::InvalidResponse {
                source: InvalidBody::NoErrorEnvelope,
                ..
            }
        ));
    }

    #[test]
    fn api_5xx_is_server_side() {
        let e = parse_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            br#"{"error":"internal","error_code":13}"#,
        );
        assert!(e.is_server_side());
    }

    #[test]
    fn wrong_shape_does_not_quote_the_body() {
        let e = parse_success::<TokenResponse>(
            StatusCode::OK,
            br#"{"access_token":["eyJ-secret-looking"]}"#,
        )
        .err()
        .map(|e| {
            format!(
                "{e} {e:?} {}",
                std::error::Error::source(&e)
                    .map(|s| s.to_string())
                    .unwrap_or_default()
            )
        })
        .unwrap_or_default();
        assert!(e.contains("unexpected shape"), "{e}");
        assert!(!e.contains("secret"), "{e}");
    }

    #[test]
    fn client_debug_hides_the_secret() {
        let client = builder()
            .client_secret(Secret::new("s3cr3t-value"))
            .build()
            .unwrap();
        let shown = format!("{client:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("[redacted]"), "{shown}");
        assert!(shown.contains("127.0.0.1:9"), "{shown}");
    }

    #[test]
    fn urls_join_the_base_path() {
        let client = builder().build().unwrap();
        assert_eq!(
            client.url("/token/introspect").as_str(),
            "http://127.0.0.1:9/auth/v1/token/introspect"
        );
        assert_eq!(client.base_url(), "http://127.0.0.1:9/auth/v1");
    }

    #[test]
    fn invalid_token_is_a_caller_error_not_an_outage() {
        let e = bearer("bad\ntoken").unwrap_err();
        assert!(!e.is_server_side());
        assert!(!e.to_string().contains("token\n"));
    }

    #[test]
    fn invalid_request_id_is_replaced() {
        let opts = CallOptions {
            request_id: Some("bad\nid".into()),
            ..Default::default()
        };
        let id = request_id(&opts);
        assert_eq!(id.len(), 36);
    }

    mod properties {
        //! Property tests: whatever CloudBase (or anything pretending to be it) answers,
        //! decoding it and reading the groups' expiry from it never panics. (That the
        //! gateway's identity headers built from any answer are valid header values is the
        //! gateway's test, beside its identity type.)
        use super::*;
        use proptest::prelude::*;
        use serde_json::Value;

        /// Arbitrary JSON, biased towards the shapes the decoders look for.
        fn json() -> impl Strategy<Value = Value> {
            let key = prop_oneof![
                Just("sub".to_owned()),
                Just("scope".to_owned()),
                Just("groups".to_owned()),
                Just("id".to_owned()),
                Just("expires_at".to_owned()),
                Just("name".to_owned()),
                Just("error".to_owned()),
                Just("error_code".to_owned()),
                Just("code".to_owned()),
                ".{0,8}",
            ];
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                any::<f64>().prop_map(Value::from),
                ".{0,24}".prop_map(Value::String),
                Just(Value::String("2099-01-01T00:00:00Z".into())),
                Just(Value::String("9999-99-99T99:99:99Z".into())),
            ];
            leaf.prop_recursive(4, 48, 6, move |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                    proptest::collection::btree_map(key.clone(), inner, 0..6)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        /// Decodes `bytes` as every CloudBase answer a gateway reads, and dates the
        /// groups of whatever profile decoded.
        fn decode_all(bytes: &[u8]) -> Result<(), TestCaseError> {
            let status = StatusCode::OK;
            let introspection = parse_success::<Introspection>(status, bytes);
            let profile = parse_success::<UserProfile>(status, bytes);
            let _ = parse_success::<TokenResponse>(status, bytes);
            for code in [400u16, 401, 429, 500, 503] {
                let _ = parse_error(StatusCode::from_u16(code).unwrap(), bytes);
            }
            let _ = introspection.unwrap_or_default().is_active();
            for group in profile.unwrap_or_default().groups {
                if let Some(at) = group.expires_at_unix() {
                    prop_assert_eq!(group.is_active_at(1_700_000_000), at > 1_700_000_000);
                }
            }
            Ok(())
        }

        proptest! {
            #[test]
            fn arbitrary_bytes_from_cloudbase_never_panic(
                bytes in proptest::collection::vec(any::<u8>(), 0..512)
            ) {
                decode_all(&bytes)?;
            }

            #[test]
            fn arbitrary_json_from_cloudbase_never_panics(value in json()) {
                decode_all(value.to_string().as_bytes())?;
            }
        }
    }
}
