//! What a relayed call is: the CloudBase Auth v2 endpoint a method and path name, and the
//! per-client limit it spends.
//!
//! The path is read the way the most lenient server would read it — path parameters
//! (`;x`) dropped, letters folded to lower case, a trailing slash ignored — so no spelling
//! of `/signin` escapes the sign-in limit or a purge, whatever CloudBase makes of it.
//! Reading too much as a session-ending call costs a cache revalidation at worst; reading
//! too little would leave a signed-out token working.

use http::Method;

use crate::metrics::{RelayEndpoint, RelayLimitName};

/// The endpoint of a call to `path` (the CloudBase path after the base URL, normal per
/// [`crate::path`], starting with `/`).
pub fn classify(method: &Method, path: &str) -> RelayEndpoint {
    let bare = crate::path::without_parameters(path).unwrap_or(std::borrow::Cow::Borrowed(path));
    let lower = bare.to_ascii_lowercase();
    let p = lower.trim_end_matches('/');
    match p {
        "/signin/anonymously" | "/signin-anonymously" => RelayEndpoint::SigninAnonymously,
        "/signin" => RelayEndpoint::Signin,
        _ if p.starts_with("/signin/") => RelayEndpoint::Signin,
        "/signup" => RelayEndpoint::Signup,
        "/verification" => RelayEndpoint::Verification,
        "/verification/verify" => RelayEndpoint::Verify,
        "/token" => RelayEndpoint::Token,
        "/token/introspect" => RelayEndpoint::Introspect,
        "/revoke" => RelayEndpoint::Revoke,
        "/user/signout" => RelayEndpoint::Signout,
        "/user/revoke/all" => RelayEndpoint::RevokeAll,
        _ if p.starts_with("/user/authorized/devices/") => RelayEndpoint::RevokeDevice,
        "/user/me" if *method == Method::DELETE => RelayEndpoint::DeleteUser,
        "/user/me" => RelayEndpoint::UserMe,
        "/user/sudo" => RelayEndpoint::Sudo,
        "/user/password" => RelayEndpoint::Password,
        _ => RelayEndpoint::Other,
    }
}

/// The per-client limit a call to `endpoint` spends: the calls that guess secrets or
/// create accounts and sessions.
pub fn limit_of(endpoint: RelayEndpoint) -> Option<RelayLimitName> {
    match endpoint {
        RelayEndpoint::Signin | RelayEndpoint::SigninAnonymously => Some(RelayLimitName::Signin),
        RelayEndpoint::Signup => Some(RelayLimitName::Signup),
        RelayEndpoint::Verification | RelayEndpoint::Verify => Some(RelayLimitName::Verification),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sdks_calls_are_told_apart() {
        for (method, path, expected) in [
            (Method::POST, "/signin", RelayEndpoint::Signin),
            (Method::POST, "/signin/with/provider", RelayEndpoint::Signin),
            (
                Method::POST,
                "/signin/anonymously",
                RelayEndpoint::SigninAnonymously,
            ),
            (
                Method::POST,
                "/signin-anonymously",
                RelayEndpoint::SigninAnonymously,
            ),
            (Method::POST, "/signup", RelayEndpoint::Signup),
            (Method::POST, "/verification", RelayEndpoint::Verification),
            (Method::POST, "/verification/verify", RelayEndpoint::Verify),
            (Method::POST, "/token", RelayEndpoint::Token),
            (Method::GET, "/token/introspect", RelayEndpoint::Introspect),
            (Method::POST, "/revoke", RelayEndpoint::Revoke),
            (Method::POST, "/user/signout", RelayEndpoint::Signout),
            (Method::DELETE, "/user/revoke/all", RelayEndpoint::RevokeAll),
            (
                Method::DELETE,
                "/user/authorized/devices/abc",
                RelayEndpoint::RevokeDevice,
            ),
            (Method::GET, "/user/me", RelayEndpoint::UserMe),
            (Method::DELETE, "/user/me", RelayEndpoint::DeleteUser),
            (Method::POST, "/user/sudo", RelayEndpoint::Sudo),
            (Method::PATCH, "/user/password", RelayEndpoint::Password),
            (Method::GET, "/user/provider", RelayEndpoint::Other),
            (Method::POST, "/signinx", RelayEndpoint::Other),
            (Method::GET, "/", RelayEndpoint::Other),
        ] {
            assert_eq!(classify(&method, path), expected, "{method} {path}");
        }
    }

    #[test]
    fn other_spellings_of_a_limited_or_session_ending_call_are_still_that_call() {
        for (method, path, expected) in [
            (Method::POST, "/signin;jsessionid=x", RelayEndpoint::Signin),
            (Method::POST, "/SignIn", RelayEndpoint::Signin),
            (Method::POST, "/signin/", RelayEndpoint::Signin),
            (
                Method::POST,
                "/verification;x/verify",
                RelayEndpoint::Verify,
            ),
            (Method::POST, "/user;a/signout;b", RelayEndpoint::Signout),
            (Method::DELETE, "/User/Me/", RelayEndpoint::DeleteUser),
        ] {
            assert_eq!(classify(&method, path), expected, "{method} {path}");
        }
    }

    #[test]
    fn sign_in_sign_up_and_verification_spend_their_limits_and_nothing_else_does() {
        assert_eq!(
            limit_of(RelayEndpoint::Signin),
            Some(RelayLimitName::Signin)
        );
        assert_eq!(
            limit_of(RelayEndpoint::SigninAnonymously),
            Some(RelayLimitName::Signin)
        );
        assert_eq!(
            limit_of(RelayEndpoint::Signup),
            Some(RelayLimitName::Signup)
        );
        assert_eq!(
            limit_of(RelayEndpoint::Verify),
            Some(RelayLimitName::Verification)
        );
        for e in [
            RelayEndpoint::Token,
            RelayEndpoint::Revoke,
            RelayEndpoint::Other,
        ] {
            assert_eq!(limit_of(e), None, "{e:?}");
        }
    }
}
