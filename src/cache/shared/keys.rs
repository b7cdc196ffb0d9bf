//! Every name the shared tier uses in Redis, and the invalidation messages it publishes.
//!
//! All names start with `key_prefix`, so several gateways (or environments) can share one
//! Redis. Nothing derived from a token other than its SHA-256 digest is ever sent; subs are
//! hashed too, which keeps index keys bounded in length whatever CloudBase calls a user.
//!
//! | name | type | what |
//! |---|---|---|
//! | `{prefix}{hex sha256(token)}` | string | an entry ([`super::codec`]), TTL = its remaining life |
//! | `{prefix}sub:{hex sha256(sub)}` | set | hex digests of the user's tokens; TTL ≥ its longest member |
//! | `{prefix}generation` | counter | bumped by purge-all; entries of older generations read as misses |
//! | `{prefix}purges` | counter | bumped by every purge (its new value numbers the purge); a write whose lookup saw another value is dropped |
//! | `{prefix}invalidations` | pub/sub channel | `{n} t:{hex}`, `{n} s:{sub}`, `{n} a`: purge number `n`, then what it drops |
//! | `{prefix}confirmed:{n}` | set | ids of the replicas that carried out purge `n`; TTL 10 s |

use sha2::{Digest, Sha256};

use crate::cache::TokenKey;

/// What another replica purged; the local cache drops the matching entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidation {
    /// One token, by digest.
    Token(TokenKey),
    /// Every positive entry of this `sub`.
    Sub(String),
    /// Everything. Also sent when the subscription was (re)established: purges published
    /// while it was down were missed.
    All,
}

#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

fn unhex(s: &str) -> Option<TokenKey> {
    let s = s.as_bytes();
    if s.len() != 64 {
        return None;
    }
    let digit = |c: u8| char::from(c).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; 32];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn entry(&self, key: &TokenKey) -> String {
        format!("{}{}", self.prefix, hex(key))
    }

    pub fn sub_index(&self, sub: &str) -> String {
        format!(
            "{}sub:{}",
            self.prefix,
            hex(&Sha256::digest(sub.as_bytes()))
        )
    }

    pub fn generation(&self) -> String {
        format!("{}generation", self.prefix)
    }

    pub fn purges(&self) -> String {
        format!("{}purges", self.prefix)
    }

    pub fn channel(&self) -> String {
        format!("{}invalidations", self.prefix)
    }

    /// The replicas that carried out purge number `n`.
    pub fn confirmed(&self, n: u64) -> String {
        format!("{}confirmed:{n}", self.prefix)
    }
}

/// A message read from the purge channel: the purge's number, to confirm it by, and what it
/// drops. The number is `None` in a message without one (what this build publishes always
/// has one): carried out, not confirmed.
pub fn parse_message(message: &[u8]) -> (Option<u64>, Invalidation) {
    if let Some(space) = message.iter().position(|&b| b == b' ') {
        let (number, rest) = (&message[..space], &message[space + 1..]);
        if !number.is_empty() && number.iter().all(u8::is_ascii_digit) {
            if let Some(n) = std::str::from_utf8(number)
                .ok()
                .and_then(|n| n.parse().ok())
            {
                return (Some(n), Invalidation::parse(rest));
            }
        }
    }
    (None, Invalidation::parse(message))
}

impl Invalidation {
    /// What the message published on the purge channel (`Keys::channel`) says after the
    /// purge's number (which the purge script puts in front).
    pub fn message(&self) -> Vec<u8> {
        match self {
            Invalidation::Token(key) => format!("t:{}", hex(key)).into_bytes(),
            Invalidation::Sub(sub) => format!("s:{sub}").into_bytes(),
            Invalidation::All => b"a".to_vec(),
        }
    }

    /// Reads a message. One this build cannot read (a newer gateway's, or junk) is taken as
    /// [`Invalidation::All`]: dropping too much costs CloudBase calls, too little serves a
    /// purged token.
    pub fn parse(message: &[u8]) -> Invalidation {
        let text = std::str::from_utf8(message).unwrap_or("");
        if let Some(digest) = text.strip_prefix("t:") {
            if let Some(key) = unhex(digest) {
                return Invalidation::Token(key);
            }
        } else if let Some(sub) = text.strip_prefix("s:") {
            return Invalidation::Sub(sub.to_owned());
        }
        Invalidation::All
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::token_key;

    #[test]
    fn names_carry_the_prefix_and_no_token_or_sub_in_clear() {
        let keys = Keys::new("gw:");
        let entry = keys.entry(&token_key("secret-token"));
        assert!(entry.starts_with("gw:") && entry.len() == 3 + 64, "{entry}");
        assert!(!entry.contains("secret"));
        let index = keys.sub_index("a very long sub ".repeat(100).as_str());
        assert!(
            index.starts_with("gw:sub:") && index.len() == 7 + 64,
            "{index}"
        );
        assert_ne!(keys.sub_index("a"), keys.sub_index("b"));
    }

    #[test]
    fn messages_round_trip_and_unknown_ones_mean_drop_everything() {
        for inv in [
            Invalidation::Token(token_key("t")),
            Invalidation::Sub("用户:42 with spaces".into()),
            Invalidation::Sub(String::new()),
            Invalidation::All,
        ] {
            assert_eq!(Invalidation::parse(&inv.message()), inv);
        }
        for junk in [&b"t:zz"[..], b"t:00", b"x:1", b"", b"\xff\xfe", b"v2:t:00"] {
            assert_eq!(Invalidation::parse(junk), Invalidation::All, "{junk:?}");
        }
    }

    #[test]
    fn a_published_message_carries_the_purge_number_to_confirm() {
        let sub = Invalidation::Sub("用户 42".into());
        let mut published = b"17 ".to_vec();
        published.extend(sub.message());
        assert_eq!(parse_message(&published), (Some(17), sub));
        assert_eq!(parse_message(b"3 a"), (Some(3), Invalidation::All));
        // No number: carried out, nothing to confirm (a sub may hold spaces and digits).
        assert_eq!(
            parse_message(b"s:12 34"),
            (None, Invalidation::Sub("12 34".into()))
        );
        for junk in [&b" a"[..], b"1x a", b"99999999999999999999999 a", b"12"] {
            assert_eq!(parse_message(junk).0, None, "{junk:?}");
        }
    }
}
