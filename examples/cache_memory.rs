//! Resident memory per cached token: fills an `IdentityCache` with N entries (default
//! 1 000 000) through `validate` against the in-process CloudBase stand-in of the benches,
//! and reports VmRSS growth per entry next to the estimate the cache's weigher charges
//! against `cache.max_memory`. Target: at most 1 KiB per signed-in user.
//!
//! ```text
//! cargo run --release --example cache_memory                      # 1 000 000 users
//! cargo run --release --example cache_memory -- 100000             # another count
//! cargo run --release --example cache_memory -- 1000000 --refused  # refused tokens instead
//! ```
//!
//! Linux only (reads `/proc/self/status`). Tokens are made one at a time and dropped, so
//! what grows is the cache: key, entry, identity and the cache's own bookkeeping. Signed-in
//! users carry the eight default identity headers; `--refused` fills the negative cache.

#[path = "../benches/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::Instant;

use cloudbase_gateway::cache::{estimated_entry_bytes, Validation, NEGATIVE_ENTRY_BYTES};

/// Resident set size of this process, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status (Linux)");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kib * 1024
}

/// Token numbers for the warm-up, far from those measured.
const WARM: u64 = 1 << 40;

fn main() {
    let usage = "usage: cache_memory [ENTRIES] [--refused]";
    let mut n: u64 = 1_000_000;
    let mut refused = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--refused" => refused = true,
            count => n = count.replace('_', "").parse().expect(usage),
        }
    }
    let runtime = support::production_runtime();
    let config = support::config(n);
    assert!(
        config.cache.max_entries >= n,
        "cache.max_entries must hold every entry"
    );
    let api = Arc::new(support::StandIn {
        refuse: refused,
        ..Default::default()
    });
    let (cache, _names) = support::cache(&config, api.clone());

    // Warm the allocator and runtime with a few entries first, so their one-off costs are
    // not charged to the entries measured.
    runtime.block_on(support::fill_expecting(&cache, WARM..WARM + 1000, !refused));
    runtime.block_on(cache.purge_all());
    let before = rss();
    let started = Instant::now();
    runtime.block_on(support::fill_expecting(&cache, 0..n, !refused));
    let entries = cache.entry_count();
    let after = rss();
    assert_eq!(entries, n, "every token is cached");
    assert_eq!(api.calls().0, n + 1000, "one introspect each");

    let estimate = if refused {
        NEGATIVE_ENTRY_BYTES
    } else {
        let token = support::jwt_like_token(0);
        match runtime.block_on(cache.validate(&token, None)) {
            Validation::Valid(identity) => estimated_entry_bytes(&identity),
            other => panic!("token 0 is cached: {other:?}"),
        }
    };
    let per_entry = (after.saturating_sub(before)) as f64 / n as f64;
    let kind = if refused {
        "refused tokens"
    } else {
        "signed-in users"
    };
    println!("entries          {n} {kind}");
    println!("fill time        {:.1?}", started.elapsed());
    println!("VmRSS before     {:.1} MiB", before as f64 / 1048576.0);
    println!("VmRSS after      {:.1} MiB", after as f64 / 1048576.0);
    println!("bytes per entry  {per_entry:.0} (target <= 1024)");
    println!("weigher estimate {estimate} (what max_memory counts per entry)");
    if per_entry > 1024.0 {
        std::process::exit(1);
    }
}
