//! Which relayed call ends which session, and what the cache must then drop.
//!
//! Pure rules; [`super`] carries them out through [`crate::cache::IdentityCache`]'s
//! `purge_token` / `purge_sub`, which with `[cache.redis]` reach every replica, the
//! relay's purges as much as an operator's. A call purges only when CloudBase answered it 2xx: a call
//! CloudBase refused ended nothing.
//!
//! - `POST /revoke {token}` (the SDK's `signOut()`): the token CloudBase revoked — the
//!   body's `token`, else the caller's (CloudBase revokes the bearer when the body names
//!   none). Only that token: a bearer sent beside another body token was not revoked, and
//!   purging a live token would buy nothing. Nothing by `sub`: `/revoke` accepts any
//!   string, so its body proves nothing about whose token it is.
//! - `POST /user/signout`, `DELETE /user/revoke/all`, `DELETE /user/authorized/devices/…`,
//!   `PATCH /user/password`, `DELETE /user/me`: every cached token of the caller's `sub`.
//!   These end a session, several, or the account, and a session holds access tokens the
//!   gateway cannot list (each refresh mints one); the user's unaffected tokens are
//!   revalidated on their next request, one CloudBase round trip each.
//!
//! Whose `sub`: the cache's entry for the caller's token (CloudBase's introspection said
//! so), else the token's own JWT `sub` claim, read without a signature check. That is
//! sound here and nowhere else: CloudBase has just accepted this very token for a call
//! that needs a live session, which it does only for a token it signed, so the claims are
//! CloudBase's own. A forged or dead token gets a 401 and purges nothing. And a purge only
//! ever removes entries, so even a wrong `sub` could cost revalidations, never grant access.

use http::header::CONTENT_TYPE;
use http::HeaderMap;
use serde::Deserialize;

use crate::http::bearer::{bearer, Credentials};
use crate::metrics::RelayEndpoint;

/// What a successful call to an endpoint ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Nothing the cache holds.
    Nothing,
    /// The one token `/revoke` named.
    RevokedToken,
    /// Sessions of the caller's user, or the user.
    CallersSessions,
}

/// The effect of a successful call to `endpoint`.
pub fn effect(endpoint: RelayEndpoint) -> Effect {
    match endpoint {
        RelayEndpoint::Revoke => Effect::RevokedToken,
        RelayEndpoint::Signout
        | RelayEndpoint::RevokeAll
        | RelayEndpoint::RevokeDevice
        | RelayEndpoint::Password
        | RelayEndpoint::DeleteUser => Effect::CallersSessions,
        _ => Effect::Nothing,
    }
}

/// What to drop from the cache after a successful call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Purge {
    Nothing,
    /// This token's entry.
    Token(String),
    /// Every entry of the user this (caller's) token belongs to.
    UserOf(String),
}

/// The caller's access token: `Authorization: Bearer`, or the `access_token` query
/// parameter the SDK sends instead when configured with `tokenInURL`.
pub fn caller_token(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    match bearer(headers) {
        Credentials::Bearer(t) => Some(t.to_owned()),
        _ => query_param(query?, "access_token"),
    }
}

/// The purge a successful call calls for. `body` is the request body for
/// [`Effect::RevokedToken`] (the only effect that reads it), empty otherwise.
pub fn plan(effect: Effect, caller: Option<String>, headers: &HeaderMap, body: &[u8]) -> Purge {
    match effect {
        Effect::Nothing => Purge::Nothing,
        Effect::RevokedToken => match revoked_token(headers, body).or(caller) {
            Some(t) => Purge::Token(t),
            None => Purge::Nothing,
        },
        Effect::CallersSessions => match caller {
            Some(t) => Purge::UserOf(t),
            None => Purge::Nothing,
        },
    }
}

/// The non-empty `token` of a `/revoke` body: JSON (CloudBase's format), or a form
/// (RFC 7009's) when the body says it is one.
fn revoked_token(headers: &HeaderMap, body: &[u8]) -> Option<String> {
    let form = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        });
    let token = if form {
        query_param(std::str::from_utf8(body).ok()?, "token")
    } else {
        #[derive(Deserialize)]
        struct Revoke {
            token: Option<String>,
        }
        serde_json::from_slice::<Revoke>(body).ok()?.token
    };
    token.filter(|t| !t.is_empty())
}

/// The first value of `name` in a form-encoded string (`+` is a space), if non-empty.
fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (form_decode(key) == name)
            .then(|| form_decode(value))
            .filter(|v| !v.is_empty())
    })
}

/// `application/x-www-form-urlencoded` decoding of one key or value.
pub fn form_decode(s: &str) -> String {
    let spaced = s.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::headers::test_header_map as headers;
    use http::header::AUTHORIZATION;
    use http::HeaderValue;

    #[test]
    fn calls_that_end_sessions_purge_and_the_rest_do_not() {
        for e in [
            RelayEndpoint::Signout,
            RelayEndpoint::RevokeAll,
            RelayEndpoint::RevokeDevice,
            RelayEndpoint::Password,
            RelayEndpoint::DeleteUser,
        ] {
            assert_eq!(effect(e), Effect::CallersSessions, "{e:?}");
        }
        assert_eq!(effect(RelayEndpoint::Revoke), Effect::RevokedToken);
        for e in [
            RelayEndpoint::Signin,
            RelayEndpoint::Token,
            RelayEndpoint::UserMe,
            RelayEndpoint::Sudo,
            RelayEndpoint::Introspect,
            RelayEndpoint::Other,
        ] {
            assert_eq!(effect(e), Effect::Nothing, "{e:?}");
        }
    }

    #[test]
    fn revoke_purges_the_token_it_names_else_the_callers() {
        let none = HeaderMap::new();
        let caller = || Some("bearer-token".to_owned());
        assert_eq!(
            plan(
                Effect::RevokedToken,
                caller(),
                &none,
                br#"{"token":"named"}"#
            ),
            Purge::Token("named".into()),
            "the named token, not the bearer beside it"
        );
        assert_eq!(
            plan(Effect::RevokedToken, caller(), &none, b"{}"),
            Purge::Token("bearer-token".into())
        );
        assert_eq!(
            plan(Effect::RevokedToken, caller(), &none, br#"{"token":""}"#),
            Purge::Token("bearer-token".into())
        );
        assert_eq!(
            plan(Effect::RevokedToken, None, &none, b"not json"),
            Purge::Nothing
        );
        let form = headers(&[("content-type", "application/x-www-form-urlencoded")]);
        assert_eq!(
            plan(
                Effect::RevokedToken,
                None,
                &form,
                b"token_type_hint=x&token=a%2Bb+c"
            ),
            Purge::Token("a+b c".into())
        );
    }

    #[test]
    fn session_ending_calls_purge_the_callers_user_and_need_a_caller() {
        let h = headers(&[("authorization", "Bearer abc.def.ghi")]);
        let caller = caller_token(&h, None);
        assert_eq!(caller.as_deref(), Some("abc.def.ghi"));
        assert_eq!(
            plan(Effect::CallersSessions, caller, &h, b""),
            Purge::UserOf("abc.def.ghi".into())
        );
        assert_eq!(
            plan(Effect::CallersSessions, None, &HeaderMap::new(), b""),
            Purge::Nothing
        );
        assert_eq!(
            plan(Effect::Nothing, Some("t".into()), &h, b""),
            Purge::Nothing
        );
    }

    #[test]
    fn the_caller_is_the_bearer_or_the_access_token_query_parameter() {
        let mut h = HeaderMap::new();
        assert_eq!(
            caller_token(&h, Some("client_id=x&access_token=q.r.s")).as_deref(),
            Some("q.r.s")
        );
        assert_eq!(caller_token(&h, Some("client_id=x")), None);
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer h.e.d"));
        assert_eq!(
            caller_token(&h, Some("access_token=q.r.s")).as_deref(),
            Some("h.e.d")
        );
    }
}
