//! The CloudBase client against misbehaving servers on real sockets: every failure mode
//! lands in the right `Error` variant, and every call carries the headers CloudBase
//! expects without leaking the token into errors.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use cloudbase_auth::error::InvalidBody;
use cloudbase_auth::{CallOptions, Client, Error, IntrospectAuth, Secret};

const TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.very-secret-token+/=";

/// A client of 127.0.0.1:`port` as `my-client` with `secret` (empty: none), calls
/// bounded at 300 ms.
fn client(port: u16, secret: &str) -> Client {
    Client::builder(format!("http://127.0.0.1:{port}/auth/v1"))
        .client_id("my-client")
        .client_secret(Secret::new(secret))
        .device_id("device-0123456789abcdef")
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap()
}

/// Serves `router` on 127.0.0.1:0 and returns a client of it with `secret`.
async fn serve(router: Router, secret: &str) -> Client {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    client(port, secret)
}

/// A server answering every request with `status` and `body`.
async fn answering(status: StatusCode, body: &'static str) -> Client {
    let router = Router::new().fallback(move || async move { (status, body) });
    serve(router, "").await
}

fn opts() -> CallOptions {
    CallOptions::default()
}

#[tokio::test]
async fn a_500_envelope_is_an_api_error_on_the_server_side() {
    let client = answering(
        StatusCode::INTERNAL_SERVER_ERROR,
        r#"{"error":"internal","error_code":13,"error_description":"boom"}"#,
    )
    .await;
    let e = client.introspect(TOKEN, &opts()).await.unwrap_err();
    match &e {
        Error::Api {
            status,
            error,
            error_code,
            error_description,
        } => {
            assert_eq!(*status, StatusCode::INTERNAL_SERVER_ERROR);
            assert_eq!(error, "internal");
            assert_eq!(*error_code, 13);
            assert_eq!(error_description, "boom");
        }
        other => panic!("{other:?}"),
    }
    assert!(e.is_server_side());
}

#[tokio::test]
async fn a_401_envelope_is_unauthenticated_and_not_server_side() {
    let client = answering(
        StatusCode::UNAUTHORIZED,
        r#"{"error":"unauthenticated","error_code":16,"error_description":"token expired"}"#,
    )
    .await;
    let e = client.user_me(TOKEN, &opts()).await.unwrap_err();
    assert!(e.is_unauthenticated(), "{e:?}");
    assert!(!e.is_server_side());
    assert_eq!(e.api_error(), Some("unauthenticated"));
}

#[tokio::test]
async fn a_200_that_is_not_json_is_an_invalid_response() {
    let client = answering(StatusCode::OK, "not json").await;
    let e = client.signin_anonymously(&opts()).await.unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidResponse {
                status: StatusCode::OK,
                source: InvalidBody::NotJson { .. }
            }
        ),
        "{e:?}"
    );
    assert!(e.is_server_side());
}

#[tokio::test]
async fn a_502_html_page_is_an_invalid_response() {
    let client = answering(StatusCode::BAD_GATEWAY, "<html>Bad Gateway</html>").await;
    let e = client.refresh("rt", &opts()).await.unwrap_err();
    assert_eq!(e.status(), Some(StatusCode::BAD_GATEWAY));
    assert!(matches!(e, Error::InvalidResponse { .. }), "{e:?}");
    assert!(e.is_server_side());
}

#[tokio::test]
async fn a_body_over_the_cap_is_rejected() {
    let router = Router::new().fallback(|| async { "x".repeat(2 << 20) });
    let client = serve(router, "").await;
    let e = client.introspect(TOKEN, &opts()).await.unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidResponse {
                source: InvalidBody::TooLarge { .. },
                ..
            }
        ),
        "{e:?}"
    );
}

#[tokio::test]
async fn a_server_that_never_answers_times_out_within_the_configured_timeout() {
    let router = Router::new().fallback(|| async {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        "late"
    });
    let client = serve(router, "").await;
    let started = Instant::now();
    let e = client.introspect(TOKEN, &opts()).await.unwrap_err();
    let took = started.elapsed();
    assert!(matches!(e, Error::Timeout), "{e:?}");
    assert!(took >= Duration::from_millis(250), "{took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert!(e.is_server_side());
}

#[tokio::test]
async fn a_closed_port_is_a_transport_error_that_does_not_leak_the_token() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let client = client(port, "client-s3cr3t");
    let e = client
        .introspect_with(TOKEN, IntrospectAuth::Client, &opts())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Transport(_)), "{e:?}");
    assert!(e.is_server_side());
    let mut shown = format!("{e} {e:?}");
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        shown.push_str(&format!(" {s} {s:?}"));
        source = s.source();
    }
    assert!(!shown.contains("very-secret"), "{shown}");
    assert!(!shown.contains("token="), "{shown}");
    assert!(!shown.contains("s3cr3t"), "{shown}");
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    query: String,
    headers: HeaderMap,
    body: String,
}

type Log = Arc<Mutex<Vec<Seen>>>;

async fn record(State(log): State<Log>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    log.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().unwrap_or_default().to_owned(),
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    // A superset every typed response parses from.
    (
        [("content-type", "application/json")],
        r#"{"access_token":"at","token_type":"Bearer","sub":"1","verification_id":"v","sudo_token":"s","verification_token":"vt"}"#,
    )
        .into_response()
}

async fn recording(secret: &str) -> (Client, Log) {
    let log = Log::default();
    let router = Router::new().fallback(record).with_state(log.clone());
    (serve(router, secret).await, log)
}

fn last(log: &Log) -> Seen {
    log.lock().unwrap().last().cloned().unwrap()
}

fn header<'a>(seen: &'a Seen, name: &str) -> Option<&'a str> {
    seen.headers.get(name).and_then(|v| v.to_str().ok())
}

/// `Basic base64("my-client:client-secret")`.
const BASIC: &str = "Basic bXktY2xpZW50OmNsaWVudC1zZWNyZXQ=";

#[tokio::test]
async fn client_calls_send_ids_basic_credentials_and_client_id() {
    let (client, log) = recording("client-secret").await;
    client
        .signin_password("alice", "password1", &opts())
        .await
        .unwrap();
    let seen = last(&log);
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.path, "/auth/v1/signin");
    assert_eq!(seen.query, "client_id=my-client");
    assert_eq!(header(&seen, "authorization"), Some(BASIC));
    assert_eq!(
        header(&seen, "x-device-id"),
        Some("device-0123456789abcdef")
    );
    let request_id = header(&seen, "x-request-id").unwrap();
    assert_eq!(request_id.len(), 36, "{request_id}");
    assert_eq!(header(&seen, "content-type"), Some("application/json"));
    assert_eq!(header(&seen, "accept"), Some("application/json"));
    assert_eq!(seen.body, r#"{"username":"alice","password":"password1"}"#);
}

#[tokio::test]
async fn call_options_override_request_and_device_ids() {
    let (client, log) = recording("").await;
    let opts = CallOptions {
        request_id: Some("req-42".into()),
        device_id: Some("browser-device-123456".into()),
        ..Default::default()
    };
    client.signin_anonymously(&opts).await.unwrap();
    let seen = last(&log);
    assert_eq!(seen.path, "/auth/v1/signin/anonymously");
    assert_eq!(header(&seen, "x-request-id"), Some("req-42"));
    assert_eq!(header(&seen, "x-device-id"), Some("browser-device-123456"));
    // No secret configured: no client credentials.
    assert_eq!(header(&seen, "authorization"), None);
    assert_eq!(seen.body, "{}");
}

#[tokio::test]
async fn introspect_client_mode_sends_the_token_in_the_query_with_basic() {
    let (client, log) = recording("client-secret").await;
    client
        .introspect_with(TOKEN, IntrospectAuth::Client, &opts())
        .await
        .unwrap();
    let seen = last(&log);
    assert_eq!(seen.method, "GET");
    assert_eq!(seen.path, "/auth/v1/token/introspect");
    assert_eq!(header(&seen, "authorization"), Some(BASIC));
    let token = url_decode_param(&seen.query, "token");
    assert_eq!(token.as_deref(), Some(TOKEN), "{}", seen.query);
    assert!(header(&seen, "x-request-id").is_some());
}

#[tokio::test]
async fn introspect_bearer_mode_and_user_calls_send_only_the_bearer_token() {
    let (client, log) = recording("client-secret").await;
    let active = client.introspect(TOKEN, &opts()).await.unwrap();
    assert!(active.is_active());
    let seen = last(&log);
    let bearer = format!("Bearer {TOKEN}");
    assert_eq!(header(&seen, "authorization"), Some(bearer.as_str()));
    assert_eq!(seen.query, "");

    client.delete_user(TOKEN, "sudo-1", &opts()).await.unwrap();
    let seen = last(&log);
    assert_eq!(seen.method, "DELETE");
    assert_eq!(seen.path, "/auth/v1/user/me");
    assert_eq!(seen.query, "sudo_token=sudo-1");
    assert_eq!(header(&seen, "authorization"), Some(bearer.as_str()));

    client.revoke(TOKEN, &opts()).await.unwrap();
    let seen = last(&log);
    assert_eq!(seen.path, "/auth/v1/revoke");
    assert_eq!(header(&seen, "authorization"), Some(bearer.as_str()));
    assert_eq!(seen.body, format!(r#"{{"token":"{TOKEN}"}}"#));
}

/// The value of `name` in a form-encoded query.
fn url_decode_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| {
            percent_encoding::percent_decode_str(&v.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}
