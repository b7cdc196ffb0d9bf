//! cloudbase-gateway: an authenticating reverse proxy for CloudBase Auth v2.
//!
//! A request goes through `server` (the accept loop, TLS, deadlines, drain) into the
//! `stack` (the middleware, one function listing them in order: hop-by-hop headers, request
//! id, sensitive headers, access log, trace, rescue, client headers, forward-auth, relay,
//! route, timeout, auth, rate limit) and ends in the `proxy` (the upstream call, or the
//! built-in `whoami`) — unless a divert before routing answers it: `forward_auth` (an
//! ingress's auth subrequests, decided as the proxy path would) or `relay` (the app's
//! CloudBase calls, purging what a sign-out ends). `app` builds all of it once from the
//! validated `config` and starts it. The CloudBase client and the emulator are crates of
//! their own (`cloudbase_auth`, `cloudbase_emulator`).
//!
//! # The import rule
//!
//! Modules are layered; each imports only from the modules listed before it, so the
//! layout reads bottom-up and nothing runs in circles (the test `layering` below holds
//! every `crate::` path in `src/` to it):
//!
//! 1. Leaves, which import nothing of the crate but earlier leaves: `keyword` (enums with
//!    one spelling each), `jwt` (what a JWT says without verifying it), `clock` (Unix time
//!    tests control), `secret`, `path` (the path policy), `identity_headers` (which header
//!    carries which profile field), `http` (body type, header names, connection info,
//!    header hygiene, the bearer token), `metrics` (the registry every layer records into).
//! 2. `config`: the TOML file, validated; one file per table.
//! 3. `telemetry`: log setup and OpenTelemetry spans (reads `[telemetry]`).
//! 4. `limit`: keyed token buckets, the relay's and the routes' rate limits.
//! 5. `cache`: validation through CloudBase, cached (and its shared Redis tier).
//! 6. `routing`: the route table and the per-request `RequestContext`.
//! 7. `rejection`: the typed refusals and their one table.
//! 8. `auth`: the auth decision (token, validation, route rules), shared by the proxy
//!    path's auth layer and forward-auth.
//! 9. `proxy`: the leaf service and the upstream client.
//! 10. `relay`, `forward_auth`: the services the diverts before routing hand requests to.
//! 11. `stack`: the middleware and the stack in one function.
//! 12. `server`, `admin`: the public and the admin listeners.
//! 13. `app`: the composition root. (`main.rs`, the CLI, uses `app`, `config`, `telemetry`.)
//!
//! A new feature module goes at the lowest place its imports allow, and into `LAYERS`
//! in the test: a shared piece (a client, a parser) low, a middleware under `stack`, a
//! runtime piece wired in `app`.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod auth;
pub mod cache;
pub mod clock;
pub mod config;
pub mod forward_auth;
pub mod http;
pub mod identity_headers;
pub mod jwt;
pub mod keyword;
pub mod limit;
pub mod metrics;
pub mod path;
pub mod proxy;
pub mod rejection;
pub mod relay;
pub mod routing;
pub mod secret;
pub mod server;
pub mod stack;
pub mod telemetry;

#[cfg(test)]
mod layering {
    //! The import rule of the crate docs, checked on the source: every `crate::` path in
    //! a module of `src/` names a module listed before it in [`LAYERS`] (or itself).

    use std::path::Path;

    /// Bottom to top: a module may import only from modules before it.
    const LAYERS: &[&str] = &[
        "keyword",
        "jwt",
        "clock",
        "secret",
        "path",
        "identity_headers",
        "http",
        "metrics",
        "config",
        "telemetry",
        "limit",
        "cache",
        "routing",
        "rejection",
        "auth",
        "proxy",
        "relay",
        "forward_auth",
        "stack",
        "server",
        "admin",
        "app",
    ];

    /// Every `.rs` file under `dir`.
    fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("src/ readable") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// `text` without comments and string literals, which may mention modules freely.
    fn code(text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        for line in text.lines() {
            let mut in_string = false;
            let mut escaped = false;
            let mut chars = line.chars().peekable();
            while let Some(c) = chars.next() {
                if in_string {
                    match c {
                        '\\' if !escaped => escaped = true,
                        '"' if !escaped => in_string = false,
                        _ => escaped = false,
                    }
                    continue;
                }
                if c == '/' && chars.peek() == Some(&'/') {
                    break;
                }
                if c == '"' {
                    in_string = true;
                    continue;
                }
                out.push(c);
            }
            out.push('\n');
        }
        out
    }

    /// The top-level modules `code` names with `crate::` (grouped imports included).
    fn imports(code: &str) -> Vec<String> {
        let mut found = Vec::new();
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let names: Vec<&str> = match rest.strip_prefix('{') {
                Some(group) => group[..group.find('}').unwrap_or(group.len())]
                    .split(',')
                    .collect(),
                None => vec![rest],
            };
            for name in names {
                let name: String = name
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    found.push(name);
                }
            }
        }
        found
    }

    #[test]
    fn every_module_imports_only_from_modules_below_it() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        sources(&src, &mut files);
        let rank = |name: &str| LAYERS.iter().position(|m| *m == name);
        let mut upward = Vec::new();
        for file in files {
            let relative = file.strip_prefix(&src).expect("under src/");
            let first = relative.components().next().expect("a component");
            let module = first.as_os_str().to_string_lossy();
            let module = module.trim_end_matches(".rs");
            if module == "lib" || module == "main" {
                continue;
            }
            let Some(own) = rank(module) else {
                panic!("src/{module} is not in LAYERS: give it its place in the import rule");
            };
            let text = std::fs::read_to_string(&file).expect("readable source");
            for imported in imports(&code(&text)) {
                match rank(&imported) {
                    Some(r) if r <= own => {}
                    Some(_) => upward.push(format!(
                        "{} imports crate::{imported}, which is above {module}",
                        relative.display()
                    )),
                    None => {}
                }
            }
        }
        assert!(
            upward.is_empty(),
            "imports running upward:\n{}",
            upward.join("\n")
        );
    }

    #[test]
    fn the_checker_sees_grouped_and_inline_paths_but_not_comments_or_strings() {
        let text = "use crate::{http::Body, config};\n// crate::app\nlet s = \"crate::stack\";\n\
                    let x = crate::metrics::Metrics::new();";
        assert_eq!(imports(&code(text)), ["http", "config", "metrics"]);
    }
}
