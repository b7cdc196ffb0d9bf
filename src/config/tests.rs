//! Loading and validating configuration: defaults, keyed errors, interpolation.

use std::time::Duration;

use super::*;

fn load(text: &str) -> Result<Config, ConfigErrors> {
    Config::from_toml_str_with_env(text, |name| (name == "SECRET").then(|| "s3cr3t".to_owned()))
}

fn errors(text: &str) -> Vec<String> {
    load(text)
        .unwrap_err()
        .0
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn empty_file_uses_defaults_with_emulator_url() {
    let c = load("[emulator]\nenabled = true\n").unwrap();
    assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.admin.listen.to_string(), "127.0.0.1:9090");
    assert_eq!(
        c.cloudbase
            .base_url_with(Some(c.emulator.listen))
            .as_deref(),
        Some("http://127.0.0.1:8081/auth/v1")
    );
    assert_eq!(
        c.cloudbase.base_url, None,
        "the embedded emulator's address, known once it is bound"
    );
    assert_eq!(c.cache.ttl, Duration::from_secs(60));
    assert_eq!(c.cache.negative_ttl, Duration::from_secs(5));
    assert_eq!(c.server.max_body_size, 10 << 20);
    assert_eq!(c.identity.headers.len(), 8);
}

#[test]
fn base_url_is_derived_from_env_id_and_region() {
    let c = load("[cloudbase]\nenv_id = \"prod-1a2b\"\nregion = \"ap-guangzhou\"\n").unwrap();
    assert_eq!(
        c.cloudbase.base_url.as_deref(),
        Some("https://prod-1a2b.ap-guangzhou.tcb-api.tencentcloudapi.com/auth/v1")
    );
    assert_eq!(
        c.cloudbase.client_id, "prod-1a2b",
        "client_id defaults to the env id"
    );
}

#[test]
fn the_shipped_config_is_valid() {
    let text = include_str!("../../config.toml");
    let c = load(text).unwrap();
    assert!(c.emulator.enabled);
    assert_eq!(c.routes[0].prefix, "/api/");
    assert_eq!(c.routes[0].upstream, Upstream::Whoami);
}

#[test]
fn environment_variables_are_interpolated_and_missing_ones_named() {
    let c = load("[cloudbase]\nenv_id = \"e\"\nclient_secret = \"${SECRET}\"\n").unwrap();
    assert_eq!(c.cloudbase.client_secret.expose(), "s3cr3t");
    assert!(
        !format!("{c:?}").contains("s3cr3t"),
        "Debug redacts the secret"
    );
    assert_eq!(
        errors("[cloudbase]\nenv_id = \"e\"\nclient_secret = \"${NOPE}\"\n"),
        ["cloudbase.client_secret: environment variable NOPE is not set"]
    );
    let c =
        load("[cloudbase]\nenv_id = \"e\"\nbase_url = \"http://x-${SECRET}:1/auth/v1\"\n").unwrap();
    assert_eq!(
        c.cloudbase.base_url.as_deref(),
        Some("http://x-s3cr3t:1/auth/v1")
    );
}

#[test]
fn every_mistake_is_reported_with_its_key() {
    let got = errors(
        r#"
bogus = 1
[server]
listen = "not an address"
request_timeout = "soon"
max_body_size = "10 parsecs"
trusted_proxies = ["10.0.0.0/8", "nope"]
tls_cert = "c.pem"
escaped_slashes = "decode"
[cache]
ttl = 5
[cloudbase]
env_id = "e"
introspect_auth = "magic"
[identity.headers]
"X-Team" = "team"
[[routes]]
prefix = "/a/"
upstream = "whoami"
[[routes]]
prefix = "b"
upstream = "whoami"
[[routes]]
prefix = "/c/"
upstream = "ftp://x"
auth = "sometimes"
methods = ["GET", "G E T"]
[[routes]]
prefix = "/a/"
upstream = "whoami"
surprise = true
"#,
    );
    let expect_keys = [
        "server.listen:",
        "server.request_timeout:",
        "server.max_body_size:",
        "server.trusted_proxies[1]:",
        "server.tls_key:",
        "server.escaped_slashes:",
        "cache.ttl:",
        "cloudbase.introspect_auth:",
        "identity.headers.X-Team:",
        "routes[1].prefix:",
        "routes[2].upstream:",
        "routes[2].auth:",
        "routes[2].methods[1]:",
        "routes[3].surprise",
        "bogus:",
    ];
    assert!(
        !got.iter().any(|e| e.starts_with("routes[3].prefix")),
        "no cascade: {got:?}"
    );
    for key in expect_keys {
        assert!(
            got.iter().any(|e| e.starts_with(key)),
            "no error for {key} in:\n{}",
            got.join("\n")
        );
    }
}

#[test]
fn duplicate_prefixes_and_bad_emulator_users_are_errors() {
    let got = errors(
        "[emulator]\nenabled = true\n[[emulator.users]]\nusername = \"u\"\npassword = \"short\"\n\
         [[routes]]\nprefix = \"/a/\"\nupstream = \"whoami\"\n[[routes]]\nprefix = \"/a/\"\nupstream = \"whoami\"\n",
    );
    assert!(
        got.iter()
            .any(|e| e.starts_with("emulator.users[0].password:")),
        "{got:?}"
    );
    assert!(
        got.iter()
            .any(|e| e.starts_with("routes[1].prefix:") && e.contains("earlier route")),
        "{got:?}"
    );
}

#[test]
fn identity_headers_merge_over_defaults_and_disabled_ones_are_still_stripped() {
    let c = load("[emulator]\nenabled = true\n[identity.headers]\n\"X-User-Email\" = \"\"\n\"X-Tenant-Picture\" = \"picture\"\n").unwrap();
    let names: Vec<&str> = c.identity.headers.iter().map(|(n, _)| n.as_str()).collect();
    assert!(!names.contains(&"x-user-email"));
    assert!(names.contains(&"x-tenant-picture"));
    assert!(
        c.identity.strip.iter().any(|n| n == "x-user-email"),
        "a turned-off header is still stripped"
    );
}

#[test]
fn sizes_and_durations_parse() {
    assert_eq!(parse_size("10MiB"), Ok(10 << 20));
    assert_eq!(parse_size("512KiB"), Ok(512 << 10));
    assert_eq!(parse_size("1000"), Ok(1000));
    assert!(parse_size("-1").is_err());
    assert!(parse_size("99999999999999999999GiB").is_err());
    assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
    assert!(parse_duration("fast").is_err());
}

#[test]
fn upstreams_parse_with_base_paths() {
    assert_eq!(parse_upstream("whoami"), Ok(Upstream::Whoami));
    match parse_upstream("https://api.internal:8443/v2/").unwrap() {
        Upstream::Http {
            scheme,
            authority,
            base_path,
        } => {
            assert_eq!(scheme.as_str(), "https");
            assert_eq!(authority.as_str(), "api.internal:8443");
            assert_eq!(base_path, "/v2");
        }
        other => panic!("{other:?}"),
    }
    assert!(parse_upstream("127.0.0.1:9000").is_err());
}

#[test]
fn invalid_toml_is_one_clear_error() {
    let got = errors("[server\nlisten = 1");
    assert_eq!(got.len(), 1);
    assert!(got[0].starts_with("not valid TOML"), "{got:?}");
}

#[test]
fn escaped_slashes_defaults_to_reject_and_reads_keep() {
    let c = load("[emulator]\nenabled = true\n").unwrap();
    assert_eq!(c.server.escaped_slashes, EscapedSlashes::Reject);
    let c = load("[emulator]\nenabled = true\n[server]\nescaped_slashes = \"keep\"\n").unwrap();
    assert_eq!(c.server.escaped_slashes, EscapedSlashes::Keep);
}

#[test]
fn route_prefixes_must_be_normal_and_hold_no_character_with_two_spellings() {
    let prefixes = [
        ("/%61pi/", "write \"/api/\""),
        ("/a//b/", "write \"/a/b/\""),
        ("/a/../b/", "write \"/b/\""),
        ("/文档/", "write \"/%E6%96%87%E6%A1%A3/\""),
        ("/../x/", "above the root"),
        ("/a%2Fb/", "encoded slash"),
        ("/v1:batch/", "':'"),
        ("/a%3Bb/", "';'"),
        ("/x@y/", "'@'"),
    ];
    let mut text = String::from("[emulator]\nenabled = true\n");
    for (p, _) in prefixes {
        text.push_str(&format!(
            "[[routes]]\nprefix = {p:?}\nupstream = \"whoami\"\n"
        ));
    }
    text.push_str("[[routes]]\nprefix = \"/ok/%E6%96%87/a.b_c-d~\"\nupstream = \"whoami\"\n");
    let got = errors(&text);
    for (i, (p, says)) in prefixes.iter().enumerate() {
        let key = format!("routes[{i}].prefix:");
        assert!(
            got.iter().any(|e| e.starts_with(&key) && e.contains(says)),
            "{p:?}: no error under {key} saying {says:?} in:\n{}",
            got.join("\n")
        );
    }
    assert_eq!(
        got.len(),
        prefixes.len(),
        "the last prefix is fine: {got:?}"
    );
}

#[test]
fn forward_auth_is_off_at_the_default_path_with_no_default_route() {
    let c = load("[emulator]\nenabled = true\n").unwrap();
    assert!(!c.forward_auth.enabled);
    assert_eq!(c.forward_auth.path, "/_gateway/auth");
    assert_eq!(c.forward_auth.default_auth, None);
    let c = load(
        "[emulator]\nenabled = true\n[forward_auth]\nenabled = true\npath = \"/auth/check\"\n\
         default_auth = \"optional\"\n",
    )
    .unwrap();
    assert!(c.forward_auth.enabled);
    assert_eq!(c.forward_auth.path, "/auth/check");
    assert_eq!(c.forward_auth.default_auth, Some(AuthMode::Optional));
}

#[test]
fn forward_auth_mistakes_are_reported_with_their_keys() {
    let with = |forward_auth: &str| {
        errors(&format!(
            "[emulator]\nenabled = true\n[forward_auth]\nenabled = true\n{forward_auth}\n"
        ))
    };
    let one = |forward_auth: &str, key: &str, says: &str| {
        let got = with(forward_auth);
        assert!(
            got.len() == 1 && got[0].starts_with(key) && got[0].contains(says),
            "{forward_auth:?}: expected one error under {key} saying {says:?}, got {got:?}"
        );
    };
    one(
        "path = \"_gateway/auth\"",
        "forward_auth.path:",
        "must start with /",
    );
    one(
        "path = \"/_gateway/auth/\"",
        "forward_auth.path:",
        "must not end with /",
    );
    one("path = \"/\"", "forward_auth.path:", "must not end with /");
    one(
        "path = \"/_gateway/%61uth\"",
        "forward_auth.path:",
        "write \"/_gateway/auth\"",
    );
    one("path = \"/auth;check\"", "forward_auth.path:", "';'");
    one(
        "default_auth = \"sometimes\"",
        "forward_auth.default_auth:",
        "\"required\"",
    );
    one("method = \"GET\"", "forward_auth.method", "unknown field");
}

#[test]
fn a_forward_auth_path_colliding_with_a_route_prefix_is_an_error_when_enabled() {
    let routes = |prefixes: &[&str]| {
        prefixes
            .iter()
            .map(|p| format!("[[routes]]\nprefix = {p:?}\nupstream = \"whoami\"\n"))
            .collect::<String>()
    };
    let text = |enabled: bool, prefixes: &[&str]| {
        format!(
            "[emulator]\nenabled = true\n[forward_auth]\nenabled = {enabled}\n{}",
            routes(prefixes)
        )
    };
    // At or under the endpoint: the route would never be reached. Over it (but `/`): the
    // endpoint would take part of the route's paths.
    let colliding = [
        "/_gateway/auth",
        "/_gateway/auth/",
        "/_gateway/auth/api/",
        "/_gateway/",
        "/_gate",
    ];
    let got = errors(&text(true, &colliding));
    assert_eq!(got.len(), colliding.len(), "{got:?}");
    for (i, p) in colliding.iter().enumerate() {
        let names = format!("routes[{i}].prefix {p:?}");
        assert!(
            got.iter()
                .any(|e| e.starts_with("forward_auth.path:") && e.contains(&names)),
            "no error naming {names} in {got:?}"
        );
    }
    // Neighbours and the catch-all are fine; so is anything while forward-auth is off.
    load(&text(true, &["/", "/_gateway/authz/", "/api/"])).unwrap();
    load(&text(false, &colliding)).unwrap();
}

#[test]
fn default_auth_next_to_a_catch_all_route_is_an_error_it_would_never_be_used() {
    let got = errors(
        "[emulator]\nenabled = true\n[forward_auth]\nenabled = true\ndefault_auth = \"required\"\n\
         [[routes]]\nprefix = \"/api/\"\nupstream = \"whoami\"\n\
         [[routes]]\nprefix = \"/\"\nupstream = \"whoami\"\n",
    );
    assert_eq!(
        got,
        ["forward_auth.default_auth: never used: routes[1].prefix \"/\" matches every path"]
    );
}

#[test]
fn security_limits_have_their_defaults() {
    let c = load("[emulator]\nenabled = true\n").unwrap();
    assert_eq!(c.server.idle_timeout, Duration::from_secs(60));
    assert_eq!(c.server.max_concurrent_streams, 100);
    assert_eq!(c.cloudbase.max_in_flight, DEFAULT_MAX_IN_FLIGHT);
    assert_eq!(c.identity.max_header_bytes, 8 << 10);
    assert!(c.admin.token.is_none());
    assert!(c.warnings().is_empty(), "loopback admin needs no token");
}

#[test]
fn security_limit_mistakes_are_reported_with_their_keys() {
    let errs = errors(
        "[server]\nmax_concurrent_streams = 0\nidle_timeout = \"soon\"\n\
         [admin]\ntoken = \"two words\"\n\
         [cloudbase]\nenv_id = \"e\"\nmax_in_flight = 1\n\
         [identity]\nmax_header_bytes = \"10\"\n\
         [identity.headers]\n\"X.Tenant\" = \"client_id\"\n",
    );
    for key in [
        "server.max_concurrent_streams:",
        "server.idle_timeout:",
        "admin.token:",
        "cloudbase.max_in_flight:",
        "identity.max_header_bytes:",
        "identity.headers.\"X.Tenant\":",
    ] {
        assert!(errs.iter().any(|e| e.starts_with(key)), "{key} in {errs:?}");
    }
    let errs = errors("[admin]\ntoken = \"\"\n[cloudbase]\nenv_id = \"e\"\n");
    assert!(
        errs.iter().any(|e| e.starts_with("admin.token:")),
        "{errs:?}"
    );
}

#[test]
fn the_upstream_pool_has_defaults_below_common_keep_alives_and_keyed_errors() {
    let c = load("[emulator]\nenabled = true\n").unwrap();
    assert_eq!(c.upstream.pool_idle_timeout, Duration::from_secs(1));
    assert_eq!(c.upstream.pool_max_idle_per_host, 1024);
    let c = load(
        "[emulator]\nenabled = true\n[upstream]\npool_idle_timeout = \"0s\"\npool_max_idle_per_host = 0\n",
    )
    .unwrap();
    assert_eq!(c.upstream.pool_idle_timeout, Duration::ZERO);
    assert_eq!(c.upstream.pool_max_idle_per_host, 0);
    for (text, key) in [
        (
            "pool_idle_timeout = \"soon\"",
            "upstream.pool_idle_timeout:",
        ),
        (
            "pool_max_idle_per_host = -1",
            "upstream.pool_max_idle_per_host:",
        ),
    ] {
        let got = errors(&format!("[emulator]\nenabled = true\n[upstream]\n{text}\n"));
        assert!(got.iter().any(|e| e.starts_with(key)), "{key} in {got:?}");
    }
    let got = errors("[emulator]\nenabled = true\n[upstream]\nidle = \"1s\"\n");
    assert!(got.iter().any(|e| e.starts_with("upstream")), "{got:?}");
}

#[test]
fn the_cache_is_bounded_by_count_and_by_bytes_with_keyed_errors() {
    let c = load("[emulator]\nenabled = true\n").unwrap();
    assert_eq!(
        (c.cache.max_entries, c.cache.max_memory),
        (100_000, 256 << 20)
    );
    let c = load("[emulator]\nenabled = true\n[cache]\nmax_memory = \"2GiB\"\n").unwrap();
    assert_eq!(c.cache.max_memory, 2 << 30);
    for (text, key) in [
        (
            "max_memory = \"512KiB\"",
            "cache.max_memory: must be at least 1MiB",
        ),
        (
            "max_memory = \"lots\"",
            "cache.max_memory: \"lots\" is not a size",
        ),
        ("max_memory = 1048576", "cache.max_memory"),
        ("max_entries = 0", "cache.max_entries: must be at least 1"),
    ] {
        let got = errors(&format!("[emulator]\nenabled = true\n[cache]\n{text}\n"));
        assert!(got.iter().any(|e| e.starts_with(key)), "{key} in {got:?}");
    }
}

#[test]
fn emulator_test_hooks_are_off_and_attempts_limited_by_default() {
    let c = load("[emulator]\nenabled = true\n").unwrap();
    assert!(!c.emulator.test_hooks);
    assert_eq!(c.emulator.limits, AttemptLimits::default());
    assert_eq!(c.emulator.limits.per_user, 5);
    assert_eq!(c.emulator.limits.lockout, Duration::from_secs(900));

    let c = load(
        "[emulator]\nenabled = true\ntest_hooks = true\nfailed_attempts_per_user = 0\n\
         failed_attempts_per_client = 3\nlockout = \"2s\"\n",
    )
    .unwrap();
    assert!(c.emulator.test_hooks);
    assert_eq!(
        c.emulator.limits,
        AttemptLimits {
            per_user: 0,
            per_client: 3,
            lockout: Duration::from_secs(2)
        }
    );

    for (text, key) in [
        ("lockout = \"0s\"", "emulator.lockout:"),
        ("lockout = \"soon\"", "emulator.lockout:"),
        (
            "failed_attempts_per_user = -1",
            "emulator.failed_attempts_per_user:",
        ),
        ("test_hooks = \"yes\"", "emulator.test_hooks:"),
    ] {
        let got = errors(&format!("[emulator]\n{text}\n"));
        assert!(got.iter().any(|e| e.starts_with(key)), "{key} in {got:?}");
    }
}

#[test]
fn ipv4_mapped_trusted_proxies_are_matched_as_ipv4() {
    let c = load(
        "[server]\ntrusted_proxies = [\"::ffff:10.0.0.0/104\", \"::ffff:127.0.0.2\", \"2001:db8::/32\"]\n\
         [cloudbase]\nenv_id = \"e\"\n",
    )
    .unwrap();
    let nets: Vec<String> = c
        .server
        .trusted_proxies
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(nets, ["10.0.0.0/8", "127.0.0.2/32", "2001:db8::/32"]);
}

#[test]
fn a_non_loopback_admin_listener_without_a_token_is_warned_about() {
    let open = load("[admin]\nlisten = \"0.0.0.0:9090\"\n[cloudbase]\nenv_id = \"e\"\n").unwrap();
    let warnings = open.warnings();
    assert_eq!(warnings.len(), 1);
    assert_eq!(warnings[0].key, "admin.listen");
    let guarded = load(
        "[admin]\nlisten = \"[::]:9090\"\ntoken = \"${SECRET}\"\n[cloudbase]\nenv_id = \"e\"\n",
    )
    .unwrap();
    assert!(guarded.warnings().is_empty());
    assert_eq!(guarded.admin.token.as_ref().unwrap().expose(), "s3cr3t");
    assert!(!format!("{guarded:?}").contains("s3cr3t"));
    let mapped =
        load("[admin]\nlisten = \"[::ffff:127.0.0.1]:9090\"\n[cloudbase]\nenv_id = \"e\"\n")
            .unwrap();
    assert!(
        mapped.warnings().is_empty(),
        "a mapped loopback is loopback"
    );
}

const REDIS_KEY: &str = "0123456789abcdef0123456789abcdef";

#[test]
fn redis_is_off_without_its_table_and_on_with_defaults_when_present() {
    let c = load("[emulator]\nenabled = true\n").unwrap();
    assert!(c.cache.redis.is_none());
    let c = load(&format!(
        "[emulator]\nenabled = true\n[cache.redis]\nurl = \"redis://127.0.0.1:6379/0\"\nhmac_key = \"{REDIS_KEY}\"\n"
    ))
    .unwrap();
    let r = c.cache.redis.expect("on");
    assert_eq!(r.url.expose(), "redis://127.0.0.1:6379/0");
    assert_eq!(r.key_prefix, "cloudbase-gateway:");
    assert_eq!(r.timeout, Duration::from_millis(50));
    assert_eq!(r.breaker_failures, 5);
    assert_eq!(r.breaker_cooldown, Duration::from_secs(5));
}

#[test]
fn redis_mistakes_are_reported_with_their_keys() {
    let cases = [
        ("hmac_key = \"k\"\n", "cache.redis.url: missing"),
        (
            "url = \"http://127.0.0.1:6379\"\n",
            "cache.redis.url: \"http://127.0.0.1:6379\" is not a redis://",
        ),
        (
            "url = \"redis://127.0.0.1:6379/zero\"\n",
            "cache.redis.url:",
        ),
        ("url = \"redis://r\"\n", "cache.redis.hmac_key: missing"),
        (
            "url = \"redis://r\"\nhmac_key = \"31-bytes-is-one-byte-too-short!\"\n",
            "cache.redis.hmac_key: must be at least 32 bytes",
        ),
        (
            "url = \"redis://r\"\ntimeout = \"0s\"\n",
            "cache.redis.timeout:",
        ),
        (
            "url = \"redis://r\"\ntimeout = \"soon\"\n",
            "cache.redis.timeout:",
        ),
        (
            "url = \"redis://r\"\nkey_prefix = \"\"\n",
            "cache.redis.key_prefix:",
        ),
        (
            "url = \"redis://r\"\nbreaker_failures = 0\n",
            "cache.redis.breaker_failures:",
        ),
        (
            "url = \"redis://r\"\nbreaker_cooldown = \"0s\"\n",
            "cache.redis.breaker_cooldown:",
        ),
        (
            "url = \"redis://r\"\ncluster = true\n",
            "cache.redis.cluster",
        ),
    ];
    for (table, says) in cases {
        let got = errors(&format!(
            "[emulator]\nenabled = true\n[cache.redis]\n{table}"
        ));
        assert!(
            got.iter().any(|e| e.starts_with(says)),
            "{table:?}: no error starting {says:?} in {got:?}"
        );
    }
}

#[test]
fn the_redis_password_and_hmac_key_never_print_and_check_output_still_loads() {
    let text = "[emulator]\nenabled = true\n[cache.redis]\n\
                url = \"rediss://gateway:${SECRET}@redis.internal:6380/2\"\n\
                hmac_key = \"${SECRET}-and-more-to-reach-32-bytes\"\n\
                key_prefix = \"prod:\"\ntimeout = \"20ms\"\n";
    let c = load(text).unwrap();
    assert_eq!(
        c.cache.redis.as_ref().unwrap().url.expose(),
        "rediss://gateway:s3cr3t@redis.internal:6380/2"
    );
    let debug = format!("{c:?}");
    let out = c.effective_toml();
    for shown in [&debug, &out] {
        assert!(!shown.contains("s3cr3t"), "{shown}");
    }
    assert!(
        out.contains("url = \"rediss://gateway:[redacted]@redis.internal:6380/2\""),
        "{out}"
    );
    let again = load(&out).unwrap_or_else(|e| panic!("check output does not load:\n{e}\n{out}"));
    let r = again.cache.redis.as_ref().unwrap();
    assert_eq!(r.key_prefix, "prod:");
    assert_eq!(r.timeout, Duration::from_millis(20));
    assert_eq!(r.hmac_key.expose(), REDACTED_HMAC_KEY);
    assert_eq!(again.effective_toml(), out, "rendering is stable");
}

#[test]
fn the_shipped_configs_commented_redis_table_is_valid_once_uncommented() {
    let shipped = include_str!("../../config.toml");
    let mut in_table = false;
    let text: String = shipped
        .lines()
        .map(|line| {
            in_table = line.starts_with("# [cache.redis]")
                || (in_table && line.starts_with("# ") && line.contains(" = "));
            let line = if in_table { &line[2..] } else { line };
            format!("{line}\n")
        })
        .collect();
    let env = |name: &str| match name {
        "REDIS_PASSWORD" => Some("pw".to_owned()),
        "CACHE_HMAC_KEY" => Some("k".repeat(64)),
        _ => None,
    };
    let c = Config::from_toml_str_with_env(&text, env).unwrap();
    let r = c.cache.redis.expect("the uncommented table turns Redis on");
    assert_eq!(r.url.expose(), "redis://gateway:pw@127.0.0.1:6379/0");
    assert_eq!(r.timeout, Duration::from_millis(50));
    assert_eq!(r.breaker_failures, 5);
}

#[test]
fn the_emulator_alone_reads_only_its_keys_and_needs_no_cloudbase_url() {
    let env = |name: &str| (name == "SECRET").then(|| "s3cr3t".to_owned());
    let alone = EmulatorConfig::from_toml_str_with_env("", env).unwrap();
    assert_eq!(alone.listen.to_string(), "127.0.0.1:8081");
    assert!(alone.options.users.is_empty());
    assert!(alone.options.allow_anonymous);
    assert!(
        load("").is_err(),
        "the gateway needs a CloudBase URL the emulator does not"
    );

    // Gateway-only rules and tables, and their unset variables, are not the emulator's.
    let text = "[server]\nlisten = \"nowhere\"\n[admin]\ntoken = \"${UNSET}\"\n\
                [cloudbase]\nenv_id = \"cli-env\"\nclient_secret = \"${SECRET}\"\n\
                introspect_auth = \"client\"\nbase_url = \"ftp://x\"\n\
                [emulator]\nlisten = \"127.0.0.1:0\"\n[[emulator.users]]\n\
                username = \"u\"\npassword = \"password-1\"\n";
    let alone = EmulatorConfig::from_toml_str_with_env(text, env).unwrap();
    assert_eq!(alone.listen.port(), 0);
    assert_eq!(alone.options.env_id, "cli-env");
    assert_eq!(
        alone.options.client_id, "cli-env",
        "the client id defaults to the env id"
    );
    assert_eq!(alone.options.client_secret.expose(), "s3cr3t");
    assert_eq!(alone.options.users[0].username, "u");

    // The emulator's own mistakes are still every one reported with its key.
    let got: Vec<String> = EmulatorConfig::from_toml_str_with_env(
        "[emulator]\nlockout = \"0s\"\nlisten = \"x\"\n[cloudbase]\nsecret = 1\n",
        env,
    )
    .unwrap_err()
    .0
    .iter()
    .map(ToString::to_string)
    .collect();
    for key in ["emulator.lockout:", "emulator.listen:", "cloudbase.secret"] {
        assert!(got.iter().any(|e| e.starts_with(key)), "{key} in {got:?}");
    }
}

#[test]
fn the_relay_is_off_with_sign_in_limits_by_default() {
    let c = load("[emulator]\nenabled = true\n").unwrap();
    let r = &c.relay;
    assert!(!r.enabled);
    assert_eq!(r.prefix, "/auth/v1/");
    assert!(r.allowed_origins.is_empty());
    assert_eq!(r.client_id, c.cloudbase.client_id);
    assert_eq!(r.max_body_size, 64 << 10);
    let signin = r.limits.signin;
    assert_eq!(signin.rate.unwrap().to_string(), "10/m");
    assert_eq!(signin.rate.unwrap().interval(), Duration::from_secs(6));
    assert_eq!(signin.burst.get(), 10);
    assert_eq!(r.limits.signup.rate.unwrap().to_string(), "5/m");
    assert_eq!(r.limits.verification.burst.get(), 5);
}

#[test]
fn rates_are_counts_per_second_minute_or_hour() {
    for (text, count, per) in [
        ("10/s", 10, RateUnit::Second),
        ("1 / min", 1, RateUnit::Minute),
        ("100/hour", 100, RateUnit::Hour),
    ] {
        let rate = parse_rate(text).unwrap();
        assert_eq!((rate.count.get(), rate.per), (count, per), "{text}");
    }
    for text in ["0/s", "10", "10/d", "-1/s", "ten/m", "/m", ""] {
        assert!(parse_rate(text).is_err(), "{text}");
    }
}

#[test]
fn relay_mistakes_are_errors_naming_their_keys() {
    let got = errors(
        "[emulator]\nenabled = true\n\
         [[routes]]\nprefix = \"/auth/v1/admin/\"\nupstream = \"whoami\"\n\
         [relay]\nenabled = true\nprefix = \"/auth/v1/\"\n\
         allowed_origins = [\"*\", \"https://app.example.com/\", \"https://App.example.com\", \
         \"https://app.example.com:443\", \"ftp://x\", \"https://ok.example.com\"]\n\
         max_body_size = \"lots\"\nsignin_rate = \"fast\"\nsignup_burst = 0\n\
         verification_rate = \"0/m\"\n",
    );
    let has = |key: &str, part: &str| got.iter().any(|e| e.starts_with(key) && e.contains(part));
    assert!(has("relay.prefix:", "routes[0]"), "{got:?}");
    for i in 0..5 {
        assert!(
            has(&format!("relay.allowed_origins[{i}]:"), ""),
            "origin {i}: {got:?}"
        );
    }
    assert!(!has("relay.allowed_origins[5]", ""), "{got:?}");
    assert!(has("relay.max_body_size:", "lots"), "{got:?}");
    assert!(has("relay.signin_rate:", "fast"), "{got:?}");
    assert!(has("relay.signup_burst:", "at least 1"), "{got:?}");
    assert!(has("relay.verification_rate:", "at least 1"), "{got:?}");

    for prefix in ["auth/v1/", "/auth/v1", "/auth/./v1/", "/auth;x/"] {
        let got = errors(&format!(
            "[emulator]\nenabled = true\n[relay]\nprefix = \"{prefix}\"\n"
        ));
        assert!(
            got.iter().any(|e| e.starts_with("relay.prefix:")),
            "{prefix}: {got:?}"
        );
    }
    let got = errors("[emulator]\nenabled = true\n[relay]\nsecret = \"x\"\n");
    assert!(got.iter().any(|e| e.starts_with("relay.secret")), "{got:?}");
}

#[test]
fn a_shorter_route_beside_the_relay_is_no_collision() {
    let c = load(
        "[emulator]\nenabled = true\n[[routes]]\nprefix = \"/\"\nupstream = \"whoami\"\n\
         [[routes]]\nprefix = \"/auth/\"\nupstream = \"whoami\"\n\
         [relay]\nenabled = true\nsignin_rate = \"off\"\nclient_id = \"web-app\"\n",
    )
    .unwrap();
    assert_eq!(c.relay.limits.signin.rate, None);
    assert_eq!(c.relay.client_id, "web-app");
}

#[test]
fn a_route_under_the_relay_prefix_is_no_collision_while_the_relay_is_off() {
    let text = |enabled: bool| {
        format!(
            "[emulator]\nenabled = true\n[[routes]]\nprefix = \"/auth/v1/admin/\"\n\
             upstream = \"whoami\"\n[relay]\nenabled = {enabled}\n"
        )
    };
    load(&text(false)).unwrap();
    let got = errors(&text(true));
    assert!(
        got.len() == 1 && got[0].starts_with("relay.prefix:") && got[0].contains("routes[0]"),
        "{got:?}"
    );
}

#[test]
fn forward_auth_and_relay_paths_that_overlap_either_way_are_errors_when_both_are_on() {
    let text = |path: &str, prefix: &str, relay: bool| {
        format!(
            "[emulator]\nenabled = true\n[forward_auth]\nenabled = true\npath = {path:?}\n\
             [relay]\nenabled = {relay}\nprefix = {prefix:?}\n"
        )
    };
    // The endpoint under the relay's prefix (the relay would take it), reported under
    // forward_auth.path; the relay's prefix at or under the endpoint (forward-auth would
    // answer its paths), reported under relay.prefix.
    for (path, prefix, key, names) in [
        (
            "/auth/v1/check",
            "/auth/v1/",
            "forward_auth.path:",
            "relay.prefix",
        ),
        (
            "/auth/v1/x/y",
            "/auth/",
            "forward_auth.path:",
            "relay.prefix",
        ),
        (
            "/auth/v1",
            "/auth/v1/",
            "relay.prefix:",
            "forward_auth.path",
        ),
        ("/auth", "/auth/v1/", "relay.prefix:", "forward_auth.path"),
    ] {
        let got = errors(&text(path, prefix, true));
        assert!(
            got.len() == 1 && got[0].starts_with(key) && got[0].contains(names),
            "{path} and {prefix}: {got:?}"
        );
        load(&text(path, prefix, false)).unwrap();
    }
    // Neighbours share no path.
    for (path, prefix) in [
        ("/_gateway/auth", "/auth/v1/"),
        ("/auth/v10", "/auth/v1/"),
        ("/auth/v1x", "/auth/v1/"),
        ("/auth/check", "/auth/v1/"),
    ] {
        load(&text(path, prefix, true)).unwrap();
    }
}

#[test]
fn routes_are_unlimited_by_default_and_a_rate_brings_a_burst_of_its_count() {
    let c = load(
        "[emulator]\nenabled = true\n\
         [[routes]]\nprefix = \"/a/\"\nupstream = \"whoami\"\n\
         [[routes]]\nprefix = \"/b/\"\nupstream = \"whoami\"\nrate_limit = \"100/s\"\n\
         [[routes]]\nprefix = \"/c/\"\nupstream = \"whoami\"\nrate_limit = \"10/m\"\n\
         rate_limit_burst = 3\nrate_limit_max_keys = 7\n\
         [[routes]]\nprefix = \"/d/\"\nupstream = \"whoami\"\nrate_limit = \"off\"\n",
    )
    .unwrap();
    assert!(c.routes[0].rate_limit.is_none());
    assert!(c.routes[3].rate_limit.is_none(), "\"off\" is no limit");
    let b = c.routes[1].rate_limit.unwrap();
    assert_eq!((b.rate.to_string(), b.burst.get()), ("100/s".into(), 100));
    assert_eq!(b.max_keys, DEFAULT_RATE_LIMIT_MAX_KEYS);
    let limit = c.routes[2].rate_limit.unwrap();
    assert_eq!((limit.burst.get(), limit.max_keys), (3, 7));
}

#[test]
fn rate_limit_mistakes_are_errors_naming_their_keys() {
    let got = errors(
        "[emulator]\nenabled = true\n\
         [[routes]]\nprefix = \"/a/\"\nupstream = \"whoami\"\nrate_limit = \"lots\"\n\
         [[routes]]\nprefix = \"/b/\"\nupstream = \"whoami\"\nrate_limit = \"5/s\"\n\
         rate_limit_burst = 0\nrate_limit_max_keys = 0\n\
         [[routes]]\nprefix = \"/c/\"\nupstream = \"whoami\"\nrate_limit_burst = 5\n\
         [[routes]]\nprefix = \"/d/\"\nupstream = \"whoami\"\nrate_limit = \"0/m\"\n\
         [[routes]]\nprefix = \"/e/\"\nupstream = \"whoami\"\nrate_limit = \"5/s\"\n\
         rate_limit_burst = -1\n",
    );
    let has = |key: &str, part: &str| got.iter().any(|e| e.starts_with(key) && e.contains(part));
    assert!(has("routes[0].rate_limit:", "lots"), "{got:?}");
    assert!(has("routes[1].rate_limit_burst:", "at least 1"), "{got:?}");
    assert!(
        has("routes[1].rate_limit_max_keys:", "at least 1"),
        "{got:?}"
    );
    assert!(
        has("routes[2].rate_limit_burst:", "rate_limit is not"),
        "{got:?}"
    );
    assert!(has("routes[3].rate_limit:", "at least 1"), "{got:?}");
    assert!(has("routes[4].rate_limit_burst", ""), "{got:?}");
}

#[test]
fn telemetry_is_off_by_default_and_posts_to_the_traces_path() {
    let c = load("[emulator]\nenabled = true\n").unwrap();
    assert_eq!(c.telemetry, TelemetrySettings::default());
    assert_eq!(c.telemetry.traces_url(), None);
    assert_eq!(c.telemetry.service_name, "cloudbase-gateway");
    assert_eq!(c.telemetry.sample_ratio, 1.0);
    let c = load(
        "[emulator]\nenabled = true\n[telemetry]\notlp_endpoint = \"http://collector:4318/\"\n\
         sample_ratio = 0\n",
    )
    .unwrap();
    assert_eq!(
        c.telemetry.traces_url().as_deref(),
        Some("http://collector:4318/v1/traces")
    );
    assert_eq!(c.telemetry.sample_ratio, 0.0, "an integer reads as a ratio");
    let c = load(
        "[emulator]\nenabled = true\n[telemetry]\n\
         otlp_endpoint = \"https://otel.example.com/custom/v1/traces\"\n",
    )
    .unwrap();
    assert_eq!(
        c.telemetry.traces_url().as_deref(),
        Some("https://otel.example.com/custom/v1/traces"),
        "a full traces URL is used as written"
    );
}

#[test]
fn telemetry_mistakes_are_errors_naming_their_keys() {
    for (endpoint, why) in [
        ("collector:4318", "scheme"),
        ("grpc://collector:4317", "scheme"),
        (
            "http://user:token@collector:4318",
            "OTEL_EXPORTER_OTLP_HEADERS",
        ),
        ("http://collector:4318/?x=1", "query"),
        ("http:///v1/traces", ""),
    ] {
        let got = errors(&format!(
            "[emulator]\nenabled = true\n[telemetry]\notlp_endpoint = \"{endpoint}\"\n"
        ));
        assert!(
            got.iter()
                .any(|e| e.starts_with("telemetry.otlp_endpoint:") && e.contains(why)),
            "{endpoint}: {got:?}"
        );
        assert!(
            got.iter().all(|e| !e.contains("token@")),
            "a credential in the URL is never echoed: {got:?}"
        );
    }
    let got = errors(
        "[emulator]\nenabled = true\n[telemetry]\nservice_name = \" \"\nsample_ratio = 1.5\n\
         exporter = \"jaeger\"\n",
    );
    let has = |key: &str| got.iter().any(|e| e.starts_with(key));
    assert!(has("telemetry.exporter"), "{got:?}");
    let got = errors(
        "[emulator]\nenabled = true\n[telemetry]\nservice_name = \" \"\nsample_ratio = 1.5\n",
    );
    let has = |key: &str| got.iter().any(|e| e.starts_with(key));
    assert!(has("telemetry.service_name:"), "{got:?}");
    assert!(has("telemetry.sample_ratio:"), "{got:?}");
}

#[test]
fn the_shipped_configs_commented_telemetry_and_rate_limit_keys_are_valid_once_uncommented() {
    let shipped = include_str!("../../config.toml");
    let mut in_table = false;
    let text: String = shipped
        .lines()
        .map(|line| {
            in_table = line.starts_with("# [telemetry]")
                || (in_table && line.starts_with("# ") && line.contains(" = "));
            let line = if in_table || line.starts_with("# rate_limit") {
                &line[2..]
            } else {
                line
            };
            format!("{line}\n")
        })
        .collect();
    let c = Config::from_toml_str(&text).unwrap();
    assert_eq!(
        c.telemetry.traces_url().as_deref(),
        Some("http://127.0.0.1:4318/v1/traces")
    );
    assert_eq!(c.telemetry.sample_ratio, 1.0);
    let limit = c.routes[0].rate_limit.expect("the /api/ route is limited");
    assert_eq!((limit.burst.get(), limit.max_keys), (50, 100_000));
    assert!(c.routes[1].rate_limit.is_none());
}

#[test]
fn breaker_settings_out_of_range_are_refused_with_their_keys() {
    let got = errors(
        "[cloudbase]\nbreaker_failures = 1001\nbreaker_cooldown = \"0s\"\n[emulator]\nenabled = true\n",
    );
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got[0].starts_with("cloudbase.breaker_failures:"), "{got:?}");
    assert!(got[1].starts_with("cloudbase.breaker_cooldown:"), "{got:?}");
    let c = load("[cloudbase]\nbreaker_failures = 0\n[emulator]\nenabled = true\n").unwrap();
    assert_eq!(c.cloudbase.breaker_failures, 0, "0 turns the breaker off");
}

#[test]
fn a_zero_idle_timeout_is_refused_with_its_key() {
    let got = errors("[server]\nidle_timeout = \"0s\"\n[emulator]\nenabled = true\n");
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].starts_with("server.idle_timeout: must be more than 0"),
        "{got:?}"
    );
}
