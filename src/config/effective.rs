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
        assert!(again.emulator.test_hooks);
        assert_eq!(again.emulator.limits, config.emulator.limits);
        assert!(out.contains("lockout = \"1m 30s\""), "{out}");
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
