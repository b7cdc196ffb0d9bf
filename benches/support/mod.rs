//! Shared by `benches/cache_hot_path.rs` and `examples/cache_memory.rs` (included with
//! `#[path]`): an in-process CloudBase stand-in, JWT-sized tokens, and the cache built the
//! way the gateway builds it.
//!
//! The stand-in answers at once, so what is measured is the gateway's own work, never a
//! network round trip.

#![allow(dead_code)] // each includer uses a different part

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use cloudbase_auth::types::{Group, Introspection, UserProfile};
use cloudbase_auth::{CallOptions, Error as ApiError};
use cloudbase_gateway::cache::{AuthApi, BoxFuture, IdentityCache, Limits, Validation};
use cloudbase_gateway::config::Config;
use cloudbase_gateway::config::IdentityMapping;
use cloudbase_gateway::metrics::Metrics;

/// A CloudBase that vouches for every token at once (or, with `refuse`, calls every token
/// inactive), counting its calls.
#[derive(Default)]
pub struct StandIn {
    pub introspects: AtomicU64,
    pub user_mes: AtomicU64,
    pub refuse: bool,
}

impl StandIn {
    /// `(introspect calls, user/me calls)` so far.
    pub fn calls(&self) -> (u64, u64) {
        (
            self.introspects.load(Ordering::SeqCst),
            self.user_mes.load(Ordering::SeqCst),
        )
    }
}

impl AuthApi for StandIn {
    fn introspect<'a>(
        &'a self,
        token: &'a str,
        _opts: &'a CallOptions,
    ) -> BoxFuture<'a, Result<Introspection, ApiError>> {
        self.introspects.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            if self.refuse {
                return Ok(Introspection::default());
            }
            Ok(Introspection {
                token_type: Some("Bearer".into()),
                client_id: Some("bench-client".into()),
                sub: Some(sub_of(token)),
                scope: Some("user".into()),
            })
        })
    }

    fn user_me<'a>(
        &'a self,
        token: &'a str,
        _opts: &'a CallOptions,
    ) -> BoxFuture<'a, Result<UserProfile, ApiError>> {
        let n = self.user_mes.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            Ok(UserProfile {
                sub: sub_of(token),
                // Non-ASCII, so the percent-encoding is part of what is cached.
                name: Some("演示用户".into()),
                username: Some(format!("user{n}")),
                email: Some(format!("user{n}@example.com")),
                phone_number: Some("+86 13800000000".into()),
                groups: vec![Group::Id("user".into())],
                ..Default::default()
            })
        })
    }
}

/// The user `token` belongs to, as both endpoints name it: a 19-digit number (CloudBase's
/// form) derived from the token's last bytes — cheap next to decoding it, and the same for
/// both calls however concurrent flights interleave (the gateway refuses answers that name
/// two users).
fn sub_of(token: &str) -> String {
    let tail = &token.as_bytes()[token.len().saturating_sub(12)..];
    let n = tail.iter().fold(0u64, |acc, b| {
        acc.wrapping_mul(131).wrapping_add(u64::from(*b))
    });
    format!(
        "{:019}",
        1_830_000_000_000_000_000 + n % 100_000_000_000_000_000
    )
}

/// A token shaped like a CloudBase access token (RS256 JWT, about 800 bytes), unique per
/// `i` and the same every time, with an `exp` in 2100 so the cache keeps it for its whole
/// `ttl`.
pub fn jwt_like_token(i: u64) -> String {
    const HEADER: &str = "eyJhbGciOiJSUzI1NiIsImtpZCI6IjlkMWRjMzFlLWI0ZDAtNDQ4Yi1hNzZmLWIwY2M2M2Q4MTg0MyIsInR5cCI6IkpXVCJ9";
    let exp: i64 = 4_102_444_800;
    let payload = format!(
        r#"{{"iss":"https://bench-env-1g2h3j4k5l.api.tcloudbasegateway.com","sub":"{sub}","aud":"bench-env-1g2h3j4k5l","exp":{exp},"iat":{iat},"scope":"user","project_id":"bench-env-1g2h3j4k5l","provider_type":"username","user_type":"internal","jti":"{i:016x}"}}"#,
        sub = 1_830_000_000_000_000_000u64 + i,
        iat = exp - 7200,
    );
    // An RS256 signature is 256 bytes; any bytes that differ per token will do.
    let mut sig = [0u8; 256];
    for (n, chunk) in sig.chunks_mut(32).enumerate() {
        use sha2::Digest;
        let block = sha2::Sha256::new()
            .chain_update(i.to_le_bytes())
            .chain_update([n as u8])
            .finalize();
        chunk.copy_from_slice(&block);
    }
    format!(
        "{HEADER}.{}.{}",
        URL_SAFE_NO_PAD.encode(payload),
        URL_SAFE_NO_PAD.encode(sig)
    )
}

/// The gateway's defaults (the eight default identity headers) with a cache that holds
/// `max_entries` of each kind for ten minutes, with `max_memory` to spare (2 KiB each).
pub fn config(max_entries: u64) -> Config {
    // The stand-in replaces the client, so the URL is never called.
    let max_memory = max_entries.max(1024) * 2048;
    let text = format!(
        "[cloudbase]\nbase_url = \"http://127.0.0.1:9/auth/v1\"\n\
         [cache]\nmax_entries = {max_entries}\nmax_memory = \"{max_memory}\"\nttl = \"10m\"\nnegative_ttl = \"10m\"\n"
    );
    Config::from_toml_str(&text).expect("bench configuration is valid")
}

/// The cache exactly as the gateway makes it, over `api`, and its identity headers.
pub fn cache(config: &Config, api: Arc<StandIn>) -> (IdentityCache, IdentityMapping) {
    let metrics = Arc::new(Metrics::new(config.routes.iter().map(|r| r.prefix.clone())));
    let names = config.identity.headers.clone();
    (
        IdentityCache::with_limits(
            &config.cache,
            &names,
            Limits::from_config(config),
            api,
            metrics,
        ),
        names,
    )
}

/// The runtime `cloudbase-gateway` runs on (see `src/main.rs`).
pub fn production_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Validates `jwt_like_token(i)` for every `i` in `range`, many at once, so the cache holds
/// one positive entry per token. Goes through the public `validate`, as requests do.
pub async fn fill(cache: &IdentityCache, range: std::ops::Range<u64>) {
    fill_expecting(cache, range, true).await
}

/// Like [`fill`]; `valid`: whether the stand-in vouches for the tokens (positive entries)
/// or refuses them (negative entries).
pub async fn fill_expecting(cache: &IdentityCache, range: std::ops::Range<u64>, valid: bool) {
    const AT_ONCE: u64 = 512;
    let mut start = range.start;
    while start < range.end {
        let end = (start + AT_ONCE).min(range.end);
        let batch = (start..end).map(|i| {
            let cache = cache.clone();
            tokio::spawn(async move {
                let token = jwt_like_token(i);
                let v = cache.validate(&token, None).await;
                assert_eq!(
                    matches!(v, Validation::Valid(_)),
                    valid,
                    "the stand-in's answer: {v:?}"
                );
            })
        });
        for task in futures_util::future::join_all(batch).await {
            task.expect("fill task");
        }
        start = end;
    }
}
