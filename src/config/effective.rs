//! The effective configuration as TOML, for `cloudbase-gateway check`: every key with the
//! value in force (defaults and `${NAME}` filled in), secrets replaced by `[redacted]`.
//!
//! The output is itself a valid configuration file, so an operator can diff it, keep it,
//! or start from it; a test holds it to that.

use std::time::Duration;

use toml::{Table, Value};

use super::{Config, IntrospectAuth, Secret, Upstream};

const REDACTED: &str = "[redacted]";

fn text(s: impl Into<String>) -> Value {
    Value::String(s.into())
}

fn duration(d: Duration) -> Value {
    text(humantime::format_duration(d).to_string())
}

/// In the largest binary unit that divides it exactly (`"256MiB"`), else in bytes.
fn size(bytes: u64) -> Value {
    let unit = [(30, "GiB"), (20, "MiB"), (10, "KiB")]
        .into_iter()
        .find(|(shift, _)| bytes != 0 && bytes % (1u64 << shift) == 0);
    text(match unit {
        Some((shift, name)) => format!("{}{name}", bytes >> shift),
        None => bytes.to_string(),
    })
}

fn secret(s: &Secret) -> Value {
    text(if s.is_empty() { "" } else { REDACTED })
}

fn strings<'a>(items: impl IntoIterator<Item = &'a str>) -> Value {
    Value::Array(items.into_iter().map(text).collect())
}

fn table<const N: usize>(pairs: [(&str, Value); N]) -> Table {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

impl Config {
    /// The configuration in force, as TOML, with secrets redacted.
    pub fn effective_toml(&self) -> String {
        let s = &self.server;
        let mut server = table([
            ("listen", text(s.listen.to_string())),
            ("request_timeout", duration(s.request_timeout)),
            ("header_read_timeout", duration(s.header_read_timeout)),
            ("idle_timeout", duration(s.idle_timeout)),
            (
                "max_concurrent_streams",
                Value::Integer(i64::from(s.max_concurrent_streams)),
            ),
            ("max_body_size", size(s.max_body_size)),
            ("max_connections", Value::Integer(s.max_connections as i64)),
            ("shutdown_grace_period", duration(s.shutdown_grace_period)),
            ("escaped_slashes", text(s.escaped_slashes.as_str())),
            (
                "trusted_proxies",
                Value::Array(
                    s.trusted_proxies
                        .iter()
                        .map(|n| text(n.to_string()))
                        .collect(),
                ),
            ),
        ]);
        if let Some(tls) = &s.tls {
            server.insert("tls_cert".into(), text(tls.cert.display().to_string()));
            server.insert("tls_key".into(), text(tls.key.display().to_string()));
        }

        let mut admin = table([("listen", text(self.admin.listen.to_string()))]);
        if let Some(token) = &self.admin.token {
            admin.insert("token".into(), secret(token));
        }

        let c = &self.cloudbase;
        let mut cloudbase = table([
            ("env_id", text(&c.env_id)),
            ("region", text(&c.region)),
            ("base_url", text(&c.base_url)),
            ("client_id", text(&c.client_id)),
            ("client_secret", secret(&c.client_secret)),
            ("device_id", text(&c.device_id)),
            (
                "introspect_auth",
                text(match c.introspect_auth {
                    IntrospectAuth::Bearer => "bearer",
                    IntrospectAuth::Client => "client",
                }),
            ),
            ("timeout", duration(c.timeout)),
            (
                "max_in_flight",
                Value::Integer(c.max_in_flight.min(i64::MAX as usize) as i64),
            ),
        ]);
        if let Some(ca) = &c.ca_file {
            cloudbase.insert("ca_file".into(), text(ca.display().to_string()));
        }

        let u = &self.upstream;
        let upstream = table([
            ("pool_idle_timeout", duration(u.pool_idle_timeout)),
            (
                "pool_max_idle_per_host",
                Value::Integer(u.pool_max_idle_per_host.min(i64::MAX as usize) as i64),
            ),
        ]);

        let k = &self.cache;
        let mut cache = table([
            (
                "max_entries",
                Value::Integer(k.max_entries.min(i64::MAX as u64) as i64),
            ),
            ("max_memory", size(k.max_memory)),
            ("ttl", duration(k.ttl)),
            ("negative_ttl", duration(k.negative_ttl)),
            ("stale_if_error", duration(k.stale_if_error)),
        ]);
        if let Some(r) = &k.redis {
            let redis = table([
                ("url", text(r.url.redacted())),
                ("key_prefix", text(&r.key_prefix)),
                ("timeout", duration(r.timeout)),
                ("hmac_key", text(super::REDACTED_HMAC_KEY)),
                (
                    "breaker_failures",
                    Value::Integer(i64::from(r.breaker_failures)),
                ),
                ("breaker_cooldown", duration(r.breaker_cooldown)),
            ]);
            cache.insert("redis".into(), Value::Table(redis));
        }

        let mut headers = Table::new();
        for name in &self.identity.strip {
            let field = self
                .identity
                .headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, f)| f.as_str());
            headers.insert(name.as_str().to_owned(), text(field.unwrap_or("")));
        }

        let routes = self
            .routes
            .iter()
            .map(|r| {
                let mut route = table([
                    ("prefix", text(&r.prefix)),
                    (
                        "upstream",
                        text(match &r.upstream {
                            Upstream::Whoami => "whoami".to_owned(),
                            Upstream::Http {
                                scheme,
                                authority,
                                base_path,
                            } => {
                                format!("{scheme}://{authority}{base_path}")
                            }
                        }),
                    ),
                    ("auth", text(r.auth.as_str())),
                    ("strip_prefix", Value::Boolean(r.strip_prefix)),
                    ("methods", strings(r.methods.iter().map(|m| m.as_str()))),
                    ("allow_anonymous", Value::Boolean(r.allow_anonymous)),
                    (
                        "require_groups",
                        strings(r.require_groups.iter().map(String::as_str)),
                    ),
                    ("pass_token", Value::Boolean(r.pass_token)),
                    ("allow_preflight", Value::Boolean(r.allow_preflight)),
                ]);
                if let Some(limit) = &r.rate_limit {
                    route.insert("rate_limit".into(), text(limit.rate.to_string()));
                    route.insert(
                        "rate_limit_burst".into(),
                        Value::Integer(limit.burst.get().into()),
                    );
                    route.insert(
                        "rate_limit_max_keys".into(),
                        Value::Integer(limit.max_keys.min(i64::MAX as usize) as i64),
                    );
                }
                Value::Table(route)
            })
            .collect();

        let f = &self.forward_auth;
        let mut forward_auth = table([
            ("enabled", Value::Boolean(f.enabled)),
            ("path", text(&f.path)),
        ]);
        if let Some(mode) = f.default_auth {
            forward_auth.insert("default_auth".into(), text(mode.as_str()));
        }

        let r = &self.relay;
        let mut relay = table([
            ("enabled", Value::Boolean(r.enabled)),
            ("prefix", text(&r.prefix)),
            (
                "allowed_origins",
                strings(r.allowed_origins.iter().map(String::as_str)),
            ),
            ("client_id", text(&r.client_id)),
            ("max_body_size", size(r.max_body_size)),
        ]);
        for (name, limit) in [
            ("signin", r.limits.signin),
            ("signup", r.limits.signup),
            ("verification", r.limits.verification),
        ] {
            let rate = limit.rate.map_or("off".to_owned(), |rate| rate.to_string());
            relay.insert(format!("{name}_rate"), text(rate));
            relay.insert(
                format!("{name}_burst"),
                Value::Integer(limit.burst.get().into()),
            );
        }

        let t = &self.telemetry;
        let mut telemetry = table([
            ("service_name", text(&t.service_name)),
            ("sample_ratio", Value::Float(t.sample_ratio)),
        ]);
        if let Some(endpoint) = &t.otlp_endpoint {
            telemetry.insert("otlp_endpoint".into(), text(endpoint));
        }

        let e = &self.emulator;
        let users = e
            .users
            .iter()
            .map(|u| {
                let mut user = table([
                    ("username", text(&u.username)),
                    ("password", secret(&u.password)),
                ]);
                for (key, value) in [
                    ("name", &u.name),
                    ("email", &u.email),
                    ("phone_number", &u.phone_number),
                ] {
                    if let Some(v) = value {
                        user.insert(key.into(), text(v));
                    }
                }
                let groups = u.groups.iter().map(|g| match &g.expires_at {
                    None => text(&g.id),
                    Some(at) => {
                        Value::Table(table([("id", text(&g.id)), ("expires_at", text(at))]))
                    }
                });
                user.insert("groups".into(), Value::Array(groups.collect()));
                Value::Table(user)
            })
            .collect();
        let emulator = table([
            ("enabled", Value::Boolean(e.enabled)),
            ("listen", text(e.listen.to_string())),
            ("verification_code", text(REDACTED)),
            ("access_token_ttl", duration(e.access_token_ttl)),
            ("allow_anonymous", Value::Boolean(e.allow_anonymous)),
            ("test_hooks", Value::Boolean(e.test_hooks)),
            (
                "failed_attempts_per_user",
                Value::Integer(e.limits.per_user.into()),
            ),
            (
                "failed_attempts_per_client",
                Value::Integer(e.limits.per_client.into()),
            ),
            ("lockout", duration(e.limits.lockout)),
            ("users", Value::Array(users)),
        ]);

        let root = table([
            ("server", Value::Table(server)),
            ("admin", Value::Table(admin)),
            ("cloudbase", Value::Table(cloudbase)),
            ("upstream", Value::Table(upstream)),
            ("cache", Value::Table(cache)),
            (
                "identity",
                Value::Table(table([
                    ("headers", Value::Table(headers)),
                    (
                        "max_header_bytes",
                        size(self.identity.max_header_bytes as u64),
                    ),
                ])),
            ),
            ("routes", Value::Array(routes)),
            ("forward_auth", Value::Table(forward_auth)),
            ("relay", Value::Table(relay)),
            ("telemetry", Value::Table(telemetry)),
            ("emulator", Value::Table(emulator)),
        ]);
        toml::to_string(&root)
            .unwrap_or_else(|e| format!("# cannot render the configuration: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;

    #[test]
    fn the_effective_config_is_a_valid_config_with_secrets_redacted() {
        let text = r#"
[server]
trusted_proxies = ["10.0.0.0/8"]
request_timeout = "1m 30s"
escaped_slashes = "keep"
idle_timeout = "90s"
max_concurrent_streams = 50
[admin]
token = "${ADMIN_TOKEN}"
[cloudbase]
max_in_flight = 64
env_id = "e"
client_secret = "${SECRET}"
introspect_auth = "client"
[upstream]
pool_idle_timeout = "1500ms"
pool_max_idle_per_host = 8
[cache]
max_memory = "64MiB"
[identity]
max_header_bytes = "4KiB"
[identity.headers]
"X-User-Email" = ""
"X-Tenant" = "client_id"
[[routes]]
prefix = "/api/"
upstream = "https://api.internal:8443/v2"
methods = ["GET"]
require_groups = ["admin"]
rate_limit = "100/s"
rate_limit_burst = 50
rate_limit_max_keys = 5000
[[routes]]
prefix = "/open/"
upstream = "whoami"
auth = "none"
rate_limit = "10/m"
[telemetry]
otlp_endpoint = "https://collector.internal:4318"
service_name = "edge-gw"
sample_ratio = 0.25
[forward_auth]
enabled = true
path = "/auth/check"
default_auth = "optional"
[relay]
enabled = true
prefix = "/cb/auth/"
allowed_origins = ["https://app.example.com", "http://localhost:5173"]
max_body_size = "16KiB"
signin_rate = "3/s"
signin_burst = 7
signup_rate = "off"
[emulator]
verification_code = "424242"
test_hooks = true
failed_attempts_per_client = 0
lockout = "90s"
[[emulator.users]]
username = "u"
password = "hunter2-password"
name = "名字 \"quoted\""
groups = ["a", { id = "b", expires_at = "2030-01-01T00:00:00Z" }]
"#;
        let env = |n: &str| match n {
            "SECRET" => Some("s3cr3t-value".to_owned()),
            "ADMIN_TOKEN" => Some("admin-t0ken-value".to_owned()),
            _ => None,
        };
        let config = Config::from_toml_str_with_env(text, env).unwrap();
        let out = config.effective_toml();
        for secret in [
            "s3cr3t-value",
            "admin-t0ken-value",
            "hunter2-password",
            "424242",
        ] {
            assert!(!out.contains(secret), "{secret} printed:\n{out}");
        }
        let again = Config::from_toml_str_with_env(&out, env)
            .unwrap_or_else(|e| panic!("effective config does not load:\n{e}\n{out}"));
        assert_eq!(again.effective_toml(), out, "rendering is stable");
        assert!(out.contains("request_timeout = \"1m 30s\""), "{out}");
        assert!(out.contains("escaped_slashes = \"keep\""), "{out}");
        assert!(out.contains("max_memory = \"64MiB\""), "{out}");
        assert!(out.contains("max_body_size = \"10MiB\""), "{out}");
        assert!(out.contains("max_body_size = \"16KiB\""), "{out}");
        assert!(out.contains("max_header_bytes = \"4KiB\""), "{out}");
        assert_eq!(
            again.server.escaped_slashes,
            crate::path::EscapedSlashes::Keep
        );
        assert!(
            out.contains("upstream = \"https://api.internal:8443/v2\""),
            "{out}"
        );
        assert!(
            out.contains("x-user-email = \"\""),
            "a turned-off header stays listed"
        );
        assert!(out.contains("x-tenant = \"client_id\""));
        assert!(out.contains("pool_idle_timeout = \"1s 500ms\""), "{out}");
        assert_eq!(again.upstream.pool_max_idle_per_host, 8);
        assert_eq!(again.routes[0].require_groups, ["admin"]);
        assert!(again.forward_auth.enabled);
        assert_eq!(again.forward_auth.path, "/auth/check");
        assert_eq!(
            again.forward_auth.default_auth,
            Some(crate::config::AuthMode::Optional)
        );
        assert_eq!(again.routes[0].rate_limit, config.routes[0].rate_limit);
        assert!(out.contains("rate_limit = \"100/s\""), "{out}");
        let open = again.routes[1].rate_limit.expect("limited");
        assert_eq!(
            open.burst.get(),
            10,
            "the burst defaults to the rate's count"
        );
        assert_eq!(open.max_keys, crate::config::DEFAULT_RATE_LIMIT_MAX_KEYS);
        assert_eq!(again.telemetry, config.telemetry);
        assert!(out.contains("sample_ratio = 0.25"), "{out}");
        assert!(again.emulator.test_hooks);
        assert_eq!(again.emulator.limits, config.emulator.limits);
        assert!(out.contains("lockout = \"1m 30s\""), "{out}");
        assert!(again.relay.enabled);
        assert_eq!(again.relay.prefix, "/cb/auth/");
        assert_eq!(again.relay.allowed_origins, config.relay.allowed_origins);
        assert_eq!(again.relay.max_body_size, 16 << 10);
        assert_eq!(again.relay.limits, config.relay.limits);
        assert!(out.contains("signin_rate = \"3/s\""), "{out}");
        assert!(out.contains("signup_rate = \"off\""), "{out}");
        assert_eq!(
            again.relay.client_id, "e",
            "defaults to cloudbase.client_id"
        );
        assert_eq!(
            again.server.idle_timeout,
            std::time::Duration::from_secs(90)
        );
        assert_eq!(again.server.max_concurrent_streams, 50);
        assert_eq!(again.cloudbase.max_in_flight, 64);
        assert_eq!(again.identity.max_header_bytes, 4096);
        assert!(
            again.admin.token.is_some(),
            "a set token stays set (redacted)"
        );
        assert_eq!(
            again.emulator.users[0].name.as_deref(),
            Some("名字 \"quoted\"")
        );
    }
}
