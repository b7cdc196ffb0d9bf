//! Resident memory per cached identity: fills an `IdentityCache` with N identities (default
//! 1 000 000) through `validate` against the in-process CloudBase stand-in of the benches,
//! and reports VmRSS growth per entry. Target: at most 1 KiB per entry.
//!
//! ```text
//! cargo run --release --example cache_memory            # 1 000 000 entries
//! cargo run --release --example cache_memory -- 100000  # another count
//! ```
//!
//! Linux only (reads `/proc/self/status`). Tokens are made one at a time and dropped, so
//! what grows is the cache: key, entry, identity and the cache's own bookkeeping.

#[path = "../benches/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::Instant;

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
    let n: u64 = match std::env::args().nth(1) {
        Some(arg) => arg
            .replace('_', "")
            .parse()
            .expect("usage: cache_memory [ENTRIES]"),
        None => 1_000_000,
    };
    let runtime = support::production_runtime();
    let config = support::config(n);
    assert!(
        config.cache.max_entries >= n,
        "cache.max_entries must hold every entry"
    );
    let api = Arc::new(support::StandIn::default());
    let (cache, _names) = support::cache(&config, api.clone());

    // Warm the allocator and runtime with a few entries first, so their one-off costs are
    // not charged to the entries measured.
    runtime.block_on(support::fill(&cache, WARM..WARM + 1000));
    cache.purge_all();
    let before = rss();
    let started = Instant::now();
    runtime.block_on(support::fill(&cache, 0..n));
    let entries = cache.entry_count();
    let after = rss();
    assert_eq!(entries, n, "every identity is cached");
    assert_eq!(
        api.calls(),
        (n + 1000, n + 1000),
        "one introspect and one user/me each"
    );

    let per_entry = (after.saturating_sub(before)) as f64 / n as f64;
    println!("entries          {n}");
    println!("fill time        {:.1?}", started.elapsed());
    println!("VmRSS before     {:.1} MiB", before as f64 / 1048576.0);
    println!("VmRSS after      {:.1} MiB", after as f64 / 1048576.0);
    println!("bytes per entry  {per_entry:.0} (target <= 1024)");
    if per_entry > 1024.0 {
        std::process::exit(1);
    }
}
