//! Loading and validating configuration: defaults, keyed errors, interpolation.

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
    assert_eq!(c.cloudbase.base_url, "http://127.0.0.1:8081/auth/v1");
    assert!(c.cloudbase.base_url_from_emulator);
    assert_eq!(c.cache.ttl, Duration::from_secs(60));
    assert_eq!(c.cache.negative_ttl, Duration::from_secs(5));
    assert_eq!(c.server.max_body_size, 10 << 20);
    assert_eq!(c.identity.headers.len(), 8);
}

#[test]
fn base_url_is_derived_from_env_id_and_region() {
    let c = load("[cloudbase]\nenv_id = \"prod-1a2b\"\nregion = \"ap-guangzhou\"\n").unwrap();
    assert_eq!(
        c.cloudbase.base_url,
        "https://prod-1a2b.ap-guangzhou.tcb-api.tencentcloudapi.com/auth/v1"
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
    assert_eq!(c.cloudbase.base_url, "http://x-s3cr3t:1/auth/v1");
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
