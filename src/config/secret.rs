//! Strings that must never be printed: client secrets, passwords, and URLs that carry one.

use std::fmt;

/// Holds a secret value. `Debug` and `Display` print `[redacted]`; only [`Secret::expose`]
/// gives the value, so every place that reads it is easy to find.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself. Call only where it goes on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "\"\""
        } else {
            "[redacted]"
        })
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A URL that may carry credentials (`redis://user:password@host`). `Debug` and `Display`
/// print it with the password (or a lone user part, which some write for a password)
/// replaced by `[redacted]`; only [`SecretUrl::expose`] gives it whole.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(value: impl Into<String>) -> Self {
        SecretUrl(value.into())
    }

    /// The URL itself. Call only where it is used to connect.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with its credentials redacted: safe for logs and `check` output.
    pub fn redacted(&self) -> String {
        let url = &self.0;
        let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
            return url.clone();
        };
        let rest = &url[scheme_end..];
        let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let Some(at) = rest[..authority_len].rfind('@') else {
            return url.clone();
        };
        let userinfo = &rest[..at];
        let shown = match userinfo.find(':') {
            Some(colon) => format!("{}:{REDACTED}", &userinfo[..colon]),
            None => REDACTED.to_owned(),
        };
        format!("{}{shown}{}", &url[..scheme_end], &rest[at..])
    }
}

const REDACTED: &str = "[redacted]";

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_urls_password_never_shows_but_the_rest_does() {
        for (url, shown) in [
            (
                "redis://app:hunter2@redis.internal:6380/1",
                "redis://app:[redacted]@redis.internal:6380/1",
            ),
            ("rediss://:hunter2@r:6379", "rediss://:[redacted]@r:6379"),
            ("redis://hunter2@r", "redis://[redacted]@r"),
            (
                "redis://u:p%40ss:hunter2@r/0?protocol=resp3",
                "redis://u:[redacted]@r/0?protocol=resp3",
            ),
            ("redis://r:6379/0", "redis://r:6379/0"),
            ("redis://r/a@b", "redis://r/a@b"),
        ] {
            let u = SecretUrl::new(url);
            assert_eq!(u.redacted(), shown);
            assert_eq!(format!("{u}"), shown);
            assert!(!format!("{u:?}").contains("hunter2"));
            assert_eq!(u.expose(), url);
        }
    }

    #[test]
    fn debug_and_display_never_show_the_value() {
        let s = Secret::new("hunter2-very-secret");
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert_eq!(format!("{s}"), "[redacted]");
        assert_eq!(s.expose(), "hunter2-very-secret");
    }
}
