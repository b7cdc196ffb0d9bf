//! The effective configuration as TOML, for `cloudbase-gateway check`: every key with the
//! value in force (defaults and `${NAME}` filled in), secrets replaced by `[redacted]`.
//!
//! It is [`Config`]'s `Serialize` impl, each table's written beside its keys (see the
//! module docs of `config`), so a new key prints without a printer to update. The output is
//! itself a valid configuration file, so an operator can diff it, keep it, or start from
//! it; a test holds it to that.

use super::Config;

impl Config {
    /// The configuration in force, as TOML, with secrets redacted.
    pub fn effective_toml(&self) -> String {
        toml::to_string(self)
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
