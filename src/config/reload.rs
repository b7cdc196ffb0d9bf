//! What a configuration reload changes in a running gateway ([`Config::reload`]): the keys
//! that changed, those of them the running gateway cannot take without a restart (they
//! are reported, and kept as they run), and whether the validation cache must go.
//!
//! Changes are found on the effective configuration (each table's `Serialize`, the text
//! `check` prints), compared key by key, plus the secrets it redacts, compared here one by
//! one; so a new key is compared without a list to update, and its reload class is
//! "reloadable" unless [`NEEDS_RESTART`] names it (or its table).

use std::collections::BTreeMap;

use super::{Config, TelemetrySettings};

/// Keys (or whole tables) the running gateway keeps until a restart: what the serve loop,
/// the admin listener, the embedded emulator, the span exporter and the cache's capacity
/// (and its Redis connection) were built with at start (`telemetry.sample_ratio` is read
/// per trace, and reloads). Turning TLS on or off (`server.tls_cert` appearing or going)
/// is one too; other certificate changes reload.
pub const NEEDS_RESTART: &[&str] = &[
    "server.listen",
    "server.header_read_timeout",
    "server.idle_timeout",
    "server.max_concurrent_streams",
    "server.max_connections",
    "server.shutdown_grace_period",
    "admin",
    "cache.max_entries",
    "cache.max_memory",
    "cache.redis",
    "telemetry.otlp_endpoint",
    "telemetry.service_name",
    "emulator",
];

/// Keys of `[cloudbase]` and `[identity]` whose change leaves the cache's entries right:
/// they bound the calls, not what CloudBase answers or how an identity is rendered.
const KEEP_CACHE: &[&str] = &["cloudbase.timeout", "cloudbase.max_in_flight"];

/// What reloading a new file into a running gateway does.
#[derive(Debug, Clone)]
pub struct Reload {
    /// Every key whose value changed, sorted.
    pub changed: Vec<String>,
    /// Those of `changed` the gateway keeps as they run until a restart.
    pub needs_restart: Vec<String>,
    /// Whether the validation cache must be dropped: the identity headers or CloudBase
    /// changed, so its entries were rendered for another mapping or vouched for by
    /// another CloudBase. A reload of routes alone keeps it.
    pub drops_cache: bool,
    /// What is in force after the reload: the new file, its [`NEEDS_RESTART`] keys as
    /// they run now.
    pub config: Config,
}

impl Reload {
    /// Whether `prefix` (a key, or a table such as `"relay"`) or any key under it changed.
    pub fn changed_under(&self, prefix: &str) -> bool {
        self.changed.iter().any(|k| under(k, prefix))
    }
}

impl Config {
    /// Reloading `new` into a gateway running `self`.
    pub fn reload(&self, new: Config) -> Reload {
        let changed = changed_keys(self, &new);
        let tls_toggled = self.server.tls.is_some() != new.server.tls.is_some();
        let needs_restart: Vec<String> = changed
            .iter()
            .filter(|k| {
                needs_restart(k)
                    || (tls_toggled && (under(k, "server.tls_cert") || under(k, "server.tls_key")))
            })
            .cloned()
            .collect();
        let drops_cache = changed.iter().any(|k| {
            (under(k, "identity") || under(k, "cloudbase"))
                && !KEEP_CACHE.iter().any(|keep| under(k, keep))
        });
        Reload {
            config: self.keeping_restart_keys(new),
            changed,
            needs_restart,
            drops_cache,
        }
    }

    /// `new`, with every [`NEEDS_RESTART`] key as `self` has it.
    fn keeping_restart_keys(&self, mut new: Config) -> Config {
        let (old, s) = (&self.server, &mut new.server);
        s.listen = old.listen;
        s.header_read_timeout = old.header_read_timeout;
        s.idle_timeout = old.idle_timeout;
        s.max_concurrent_streams = old.max_concurrent_streams;
        s.max_connections = old.max_connections;
        s.shutdown_grace_period = old.shutdown_grace_period;
        if old.tls.is_some() != s.tls.is_some() {
            s.tls = old.tls.clone();
        }
        new.admin = self.admin.clone();
        new.cache.max_entries = self.cache.max_entries;
        new.cache.max_memory = self.cache.max_memory;
        new.cache.redis = self.cache.redis.clone();
        // The exporter and its resource stay; the sampler takes a new ratio.
        new.telemetry = TelemetrySettings {
            sample_ratio: new.telemetry.sample_ratio,
            ..self.telemetry.clone()
        };
        if self.emulator.enabled != new.emulator.enabled {
            // Which CloudBase an unset `base_url` means (the embedded emulator's, or the
            // one `env_id` names) follows `emulator.enabled`, which stays as it runs.
            new.cloudbase.base_url = self.cloudbase.base_url.clone();
        }
        new.emulator = self.emulator.clone();
        new
    }
}

/// Whether `key` is `prefix` or a key under it.
fn under(key: &str, prefix: &str) -> bool {
    key.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
}

fn needs_restart(key: &str) -> bool {
    NEEDS_RESTART.iter().any(|p| under(key, p))
}

/// The keys whose value differs between `old` and `new`.
fn changed_keys(old: &Config, new: &Config) -> Vec<String> {
    let (a, b) = (leaves(old), leaves(new));
    let mut changed: Vec<String> = a
        .iter()
        .filter(|(k, v)| b.get(*k) != Some(v))
        .map(|(k, _)| k.clone())
        .chain(b.keys().filter(|k| !a.contains_key(*k)).cloned())
        .collect();
    // The secrets the effective configuration prints as `[redacted]`.
    let secrets = [
        (
            "cloudbase.client_secret",
            old.cloudbase.client_secret != new.cloudbase.client_secret,
        ),
        ("admin.token", old.admin.token != new.admin.token),
        (
            "cache.redis.url",
            old.cache.redis.as_ref().map(|r| &r.url) != new.cache.redis.as_ref().map(|r| &r.url),
        ),
        (
            "cache.redis.hmac_key",
            old.cache.redis.as_ref().map(|r| &r.hmac_key)
                != new.cache.redis.as_ref().map(|r| &r.hmac_key),
        ),
        (
            "emulator.verification_code",
            old.emulator.verification_code != new.emulator.verification_code,
        ),
        (
            "emulator.users",
            !old.emulator.users.iter().map(|u| &u.password).eq(new
                .emulator
                .users
                .iter()
                .map(|u| &u.password)),
        ),
    ];
    for (key, differs) in secrets {
        if differs {
            changed.push(key.to_owned());
        }
    }
    changed.sort();
    changed.dedup();
    changed
}

/// The effective configuration as `key -> value`, tables flattened (`server.listen`),
/// arrays whole (`routes`, `server.trusted_proxies`).
fn leaves(config: &Config) -> BTreeMap<String, toml::Value> {
    fn walk(prefix: &str, value: toml::Value, out: &mut BTreeMap<String, toml::Value>) {
        match value {
            toml::Value::Table(table) => {
                for (k, v) in table {
                    let key = if prefix.is_empty() {
                        k
                    } else {
                        format!("{prefix}.{}", super::validate::quote_key(&k))
                    };
                    walk(&key, v, out);
                }
            }
            leaf => {
                out.insert(prefix.to_owned(), leaf);
            }
        }
    }
    let mut out = BTreeMap::new();
    if let Ok(value) = toml::Value::try_from(config) {
        walk("", value, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        Config::from_toml_str_with_env(
            &format!(
                "[cloudbase]\nenv_id = \"e\"\n[[routes]]\nprefix = \"/api/\"\nupstream = \"whoami\"\n{extra}"
            ),
            |_| None,
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_reload_of_routes_alone_keeps_the_cache_and_needs_no_restart() {
        let old = config("");
        let new =
            config("[[routes]]\nprefix = \"/v2/\"\nupstream = \"whoami\"\nrate_limit = \"5/s\"\n");
        let r = old.reload(new);
        assert_eq!(r.changed, ["routes"]);
        assert!(r.changed_under("routes"));
        assert!(
            !r.changed_under("route"),
            "a table is matched by its whole name"
        );
        assert!(r.needs_restart.is_empty());
        assert!(!r.drops_cache);
        assert_eq!(r.config.routes.len(), 2);
    }

    #[test]
    fn identity_headers_or_cloudbase_changes_drop_the_cache_but_call_bounds_do_not() {
        let old = config("");
        for (extra, drops) in [
            ("[identity.headers]\n\"X-Tenant\" = \"client_id\"\n", true),
            ("[identity]\nmax_header_bytes = \"1KiB\"\n", true),
            ("[cloudbase]\nclient_id = \"other\"\n", true),
            ("[cloudbase]\ndevice_id = \"other\"\n", true),
            ("[cloudbase]\ntimeout = \"5s\"\nmax_in_flight = 8\n", false),
            ("[cache]\nttl = \"10s\"\n", false),
        ] {
            // `[cloudbase]` twice is not TOML: merge the extra table into the first.
            let text = if let Some(rest) = extra.strip_prefix("[cloudbase]\n") {
                format!("[cloudbase]\nenv_id = \"e\"\n{rest}[[routes]]\nprefix = \"/api/\"\nupstream = \"whoami\"\n")
            } else {
                format!("[cloudbase]\nenv_id = \"e\"\n[[routes]]\nprefix = \"/api/\"\nupstream = \"whoami\"\n{extra}")
            };
            let new = Config::from_toml_str_with_env(&text, |_| None).unwrap();
            let r = old.reload(new);
            assert_eq!(r.drops_cache, drops, "{extra}: {:?}", r.changed);
            assert!(r.needs_restart.is_empty(), "{extra}: {:?}", r.needs_restart);
        }
    }

    #[test]
    fn a_changed_client_secret_is_seen_though_it_prints_redacted() {
        let env = |secret: &'static str| move |_: &str| Some(secret.to_owned());
        let text = "[cloudbase]\nenv_id = \"e\"\nclient_secret = \"${S}\"\n";
        let old = Config::from_toml_str_with_env(text, env("one")).unwrap();
        let new = Config::from_toml_str_with_env(text, env("two")).unwrap();
        let r = old.reload(new);
        assert_eq!(r.changed, ["cloudbase.client_secret"]);
        assert!(r.drops_cache);
    }

    #[test]
    fn a_new_redis_url_needs_a_restart_though_it_prints_redacted() {
        let redis = |url: &str| {
            config(&format!(
                "[cache.redis]\nurl = \"{url}\"\nhmac_key = \"{}\"\n",
                "k".repeat(32)
            ))
        };
        let old = redis("redis://one:6379/0");
        let r = old.reload(redis("redis://two:6379/0"));
        assert_eq!(r.changed, ["cache.redis.url"]);
        assert_eq!(r.needs_restart, ["cache.redis.url"]);
        assert!(!r.drops_cache);
        assert_eq!(
            r.config.cache.redis.as_ref().map(|c| &c.url),
            old.cache.redis.as_ref().map(|c| &c.url)
        );
    }

    #[test]
    fn keys_that_need_a_restart_are_named_and_kept_as_they_run() {
        let old = config("[server]\nlisten = \"127.0.0.1:8080\"\n");
        let new = config(
            "[server]\nlisten = \"127.0.0.1:9999\"\nmax_connections = 5\nidle_timeout = \"5s\"\n\
             tls_cert = \"c.pem\"\ntls_key = \"k.pem\"\nrequest_timeout = \"3s\"\n\
             [admin]\nlisten = \"127.0.0.1:9998\"\ntoken = \"t-0123456789abcdef\"\n\
             [cache]\nmax_entries = 10\nttl = \"1s\"\n\
             [telemetry]\nservice_name = \"gw\"\nsample_ratio = 0.5\n\
             [emulator]\nenabled = true\nverification_code = \"123456\"\n",
        );
        let r = old.reload(new);
        for key in [
            "server.listen",
            "server.max_connections",
            "server.idle_timeout",
            "server.tls_cert",
            "server.tls_key",
            "admin.listen",
            "admin.token",
            "cache.max_entries",
            "telemetry.service_name",
            "emulator.enabled",
            "emulator.verification_code",
        ] {
            assert!(
                r.needs_restart.iter().any(|k| k == key),
                "{key}: {:?}",
                r.needs_restart
            );
        }
        for reloaded in [
            "server.request_timeout",
            "cache.ttl",
            "telemetry.sample_ratio",
        ] {
            assert!(r.changed.iter().any(|k| k == reloaded));
            assert!(!r.needs_restart.iter().any(|k| k == reloaded));
        }
        // What is in force differs from what runs only in reloadable keys.
        let again = old.reload(r.config.clone());
        assert!(again.needs_restart.is_empty(), "{:?}", again.needs_restart);
        assert_eq!(
            again.changed,
            [
                "cache.ttl",
                "server.request_timeout",
                "telemetry.sample_ratio"
            ]
        );
        assert_eq!(r.config.server.listen, old.server.listen);
        assert!(
            r.config.server.tls.is_none(),
            "TLS stays off until a restart"
        );
    }
}
