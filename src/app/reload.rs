//! Hot reload: on `SIGHUP`, and when the configuration file changes, the file is loaded
//! and validated again. A valid file is put in force for every request from the next on;
//! an invalid one changes nothing, and each mistake is logged with its key, as `check`
//! prints them. Both count in `config_reloads_total{result}`.
//!
//! What is rebuilt: the whole stack (routes, identity headers, rules, timeouts, limits,
//! the diverts) is built again and swapped in whole ([`crate::server::Live`]: one atomic
//! load per request; in-flight requests finish on the stack they started with, no
//! connection is closed). The pieces with state are carried over rather than rebuilt: the
//! metrics (route series continue by prefix), the cache (reconfigured in place, and
//! emptied only when the identity headers or CloudBase changed), the routes' rate-limit
//! buckets (kept where a route's prefix and limit are unchanged), the relay's sign-in
//! buckets and the upstream connection pool (kept unless their settings changed). The TLS
//! key pair is read again on every reload, so `SIGHUP` after renewing the certificate
//! files in place is enough. What cannot change without a restart
//! ([`crate::config::NEEDS_RESTART`]) is logged as such, with its key, and keeps running
//! as it was.
//!
//! The file is watched through its directory (editors and Kubernetes replace files rather
//! than write them in place), and events are debounced for [`DEBOUNCE`]: an editor's
//! save or `cp` is several events, and a half-written file would otherwise be refused
//! (and counted as an error) before the complete one is read. 250 ms is far longer than
//! a save takes and far shorter than an operator waits for. A file event that leaves
//! the configuration as it is in force (the same text saved again, a relinked ConfigMap,
//! only comments changed) does nothing and counts nothing; `SIGHUP` always reloads (the
//! certificate files may have changed). The watch and the `SIGHUP` handler are installed
//! before the listeners are bound ([`Triggers`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::{cloudbase_client, upstream_client, Runtime, StartError};
use crate::cache::{AuthApi, Limits};
use crate::config::{Config, Reload};
use crate::limit::RouteLimits;
use crate::metrics::ConfigReload;
use crate::server::Live;
use crate::stack::GatewayService;

/// How long the file must stay quiet after a change before it is read.
pub const DEBOUNCE: Duration = Duration::from_millis(250);

/// What asked for a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    /// `SIGHUP`: reload whatever the file says.
    Signal,
    /// The file (or its directory entry) changed.
    File,
}

/// Where reload requests arrive: `SIGHUP` and the watch of the file. Installed
/// ([`Triggers::install`]) before any listener is bound, so once the gateway accepts
/// connections both are live: a `SIGHUP` then reloads rather than ending the process (the
/// signal's default action while no handler is installed), and a change made then is
/// seen.
pub(super) struct Triggers {
    rx: mpsc::Receiver<Trigger>,
    /// Kept while reloads are taken; dropping it removes the watch.
    watcher: Option<notify::RecommendedWatcher>,
}

impl Triggers {
    /// Installs the `SIGHUP` handler and watches the file at `path`.
    pub(super) fn install(path: &Path) -> Triggers {
        let (tx, rx) = mpsc::channel::<Trigger>(16);
        listen_for_hangup(tx.clone());
        let watcher = watch_file(path, tx);
        Triggers { rx, watcher }
    }
}

/// The configuration in force and what was built from it, which a reload replaces.
pub(super) struct Reloader {
    path: PathBuf,
    config: Config,
    runtime: Runtime,
    /// The embedded emulator's address (the CloudBase URL when `base_url` is unset).
    emulator: Option<std::net::SocketAddr>,
    live: Live<GatewayService>,
    /// The text last read from the file: a file event that leaves it so does nothing
    /// (a broken file touched again is not refused and counted again).
    text: Option<String>,
}

impl Reloader {
    pub(super) fn new(
        path: PathBuf,
        config: Config,
        runtime: Runtime,
        emulator: Option<std::net::SocketAddr>,
        live: Live<GatewayService>,
    ) -> Reloader {
        Reloader {
            config,
            runtime,
            emulator,
            live,
            text: None,
            path,
        }
    }

    /// Starts reloading on `triggers` and on changes of the file, until `shutdown`.
    pub(super) fn spawn(self, triggers: Triggers, mut shutdown: watch::Receiver<bool>) {
        let Triggers { mut rx, watcher } = triggers;
        let mut reloader = self;
        tokio::spawn(async move {
            // Dropped (and the watch removed) when the gateway stops.
            let _watcher = watcher;
            loop {
                let forced = tokio::select! {
                    f = next_reload(&mut rx) => match f { Some(f) => f, None => break },
                    _ = shutdown.wait_for(|v| *v) => break,
                };
                reloader.reload(forced);
            }
        });
    }

    /// Loads the file; puts it in force if valid, else logs every mistake. `forced`: even
    /// if the text is the one in force.
    fn reload(&mut self, forced: bool) {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) => {
                tracing::error!(
                    path = %self.path.display(),
                    error = %e,
                    "configuration reload failed: cannot read the file; the configuration in force stays"
                );
                self.runtime.metrics.config_reload(ConfigReload::Error);
                return;
            }
        };
        if !forced && self.text.as_deref() == Some(text.as_str()) {
            return;
        }
        self.text = Some(text.clone());
        let new = match Config::from_toml_str(&text) {
            Ok(new) => new,
            Err(errors) => {
                for e in &errors.0 {
                    tracing::error!(key = %e.key, "configuration reload: {e}");
                }
                tracing::error!(
                    path = %self.path.display(),
                    errors = errors.0.len(),
                    "configuration reload failed: the file has errors; the configuration in force stays"
                );
                self.runtime.metrics.config_reload(ConfigReload::Error);
                return;
            }
        };
        let reload = self.config.reload(new);
        if !forced && reload.changed.is_empty() {
            // The configuration in force, written again (or relinked, or first seen).
            return;
        }
        for key in &reload.needs_restart {
            tracing::warn!(
                key = %key,
                "configuration reload: {key} changed but needs a restart; the running value stays"
            );
        }
        match self.apply(&reload) {
            Ok(()) => {
                tracing::info!(
                    changed = ?reload.changed,
                    cache_dropped = reload.drops_cache,
                    "configuration reloaded"
                );
                self.config = reload.config;
                self.runtime.metrics.config_reload(ConfigReload::Ok);
            }
            Err(e) => {
                tracing::error!(
                    error = %e,
                    "configuration reload failed; the configuration in force stays"
                );
                self.runtime.metrics.config_reload(ConfigReload::Error);
            }
        }
    }

    /// Builds what `reload` needs and puts it in force. Everything that can fail (the
    /// clients, the relay, the key pair) is done before anything is swapped, so a failure
    /// leaves the gateway as it was.
    fn apply(&mut self, reload: &Reload) -> Result<(), StartError> {
        let config = &reload.config;
        let changed = |prefix: &str| reload.changed_under(prefix);
        let cloudbase_url = config
            .cloudbase
            .base_url_with(self.emulator)
            .ok_or_else(|| StartError::Setup {
                what: "CloudBase client",
                source: "no CloudBase URL: set cloudbase.base_url or cloudbase.env_id".into(),
            })?;
        let api: Option<Arc<dyn AuthApi>> = if changed("cloudbase") {
            let client = cloudbase_client(&config.cloudbase, &cloudbase_url).map_err(|e| {
                StartError::Setup {
                    what: "CloudBase client",
                    source: e.into(),
                }
            })?;
            Some(Arc::new(client))
        } else {
            None
        };
        let mut runtime = self.runtime.clone();
        if changed("upstream") || changed("cloudbase.ca_file") {
            runtime.upstream =
                upstream_client(&config.upstream, config.cloudbase.ca_file.as_deref()).map_err(
                    |source| StartError::Setup {
                        what: "upstream client",
                        source,
                    },
                )?;
        }
        runtime.rate_limits =
            RouteLimits::carried_over(&config.routes, &self.config.routes, &runtime.rate_limits);
        runtime.forward_auth = runtime.forward_auth(config);
        let relay_changed = ["relay", "cloudbase", "upstream", "server.escaped_slashes"]
            .into_iter()
            .chain(["server.trusted_proxies", "server.request_timeout"])
            .any(changed);
        if relay_changed || runtime.relay.is_none() {
            runtime.relay = runtime.relay(config, &cloudbase_url)?;
        }
        if let (Some(acceptors), Some(files)) = (&runtime.tls, &config.server.tls) {
            acceptors.reload(files).map_err(StartError::Tls)?;
        }
        // Nothing below fails.
        if let Some(tracing) = &runtime.tracing {
            tracing.set_sample_ratio(config.telemetry.sample_ratio);
        }
        let dropped = runtime.cache.reconfigure(
            &config.cache,
            &config.identity.headers,
            Limits::from_config(config),
            api,
            reload.drops_cache,
        );
        if reload.drops_cache {
            tracing::info!(
                entries = dropped,
                "identity headers or CloudBase changed: validation cache dropped"
            );
        }
        self.live.store(runtime.service(config));
        self.runtime = runtime;
        Ok(())
    }
}

/// Waits for the next reload to do: at once on `SIGHUP`; on a file change once the file
/// has been quiet for [`DEBOUNCE`] (however many events a save makes). `Some(forced)`:
/// whether a `SIGHUP` asked for it (reload even an unchanged text); `None` once nothing
/// can trigger any more.
async fn next_reload(rx: &mut mpsc::Receiver<Trigger>) -> Option<bool> {
    let mut forced = rx.recv().await? == Trigger::Signal;
    if !forced {
        // A SIGHUP meanwhile makes it forced.
        while let Ok(Some(more)) = tokio::time::timeout(DEBOUNCE, rx.recv()).await {
            forced |= more == Trigger::Signal;
        }
    }
    Some(forced)
}

/// Sends [`Trigger::Signal`] on every `SIGHUP`.
fn listen_for_hangup(tx: mpsc::Sender<Trigger>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::hangup()) {
            Ok(mut hangups) => {
                tokio::spawn(async move {
                    while hangups.recv().await.is_some() {
                        tracing::info!("SIGHUP: reloading the configuration");
                        if tx.send(Trigger::Signal).await.is_err() {
                            break;
                        }
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; reload on file changes only")
            }
        }
    }
    #[cfg(not(unix))]
    drop(tx);
}

/// Watches the directory of `path` and sends [`Trigger::File`] when an entry that can
/// change what `path` reads changes: the file itself, or Kubernetes' `..data` link that a
/// ConfigMap update swaps. `None` (logged) if the platform cannot watch it.
fn watch_file(path: &Path, tx: mpsc::Sender<Trigger>) -> Option<notify::RecommendedWatcher> {
    use notify::{EventKind, RecursiveMode, Watcher};

    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name()?.to_owned();
    let handler = move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        // Reads (ours included) are not changes.
        if matches!(event.kind, EventKind::Access(_)) {
            return;
        }
        let ours = event.paths.iter().any(|p| {
            p.file_name()
                .is_some_and(|n| n == name.as_os_str() || n == "..data")
        });
        if ours {
            // Full: a reload is already queued, which will read this change too.
            let _ = tx.try_send(Trigger::File);
        }
    };
    let watched = notify::recommended_watcher(handler)
        .and_then(|mut w| w.watch(&dir, RecursiveMode::NonRecursive).map(|()| w));
    match watched {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(
                dir = %dir.display(),
                error = %e,
                "cannot watch the configuration file; reload with SIGHUP"
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    /// Sends `triggers`, each after the delay beside it.
    fn send(triggers: &[(u64, Trigger)]) -> mpsc::Receiver<Trigger> {
        let (tx, rx) = mpsc::channel(16);
        let triggers = triggers.to_vec();
        tokio::spawn(async move {
            for (after, trigger) in triggers {
                tokio::time::sleep(Duration::from_millis(after)).await;
                tx.send(trigger).await.unwrap();
            }
            // Kept open: the receiver must not see an end it would stop on.
            std::future::pending::<()>().await;
        });
        rx
    }

    #[tokio::test(start_paused = true)]
    async fn a_save_of_several_events_is_one_reload_once_the_file_is_quiet() {
        use Trigger::File;
        let start = Instant::now();
        let mut rx = send(&[(0, File), (100, File), (200, File)]);
        assert_eq!(next_reload(&mut rx).await, Some(false));
        assert_eq!(start.elapsed(), Duration::from_millis(300) + DEBOUNCE);
        let none_left = tokio::time::timeout(Duration::from_secs(5), next_reload(&mut rx)).await;
        assert!(none_left.is_err(), "one save, one reload");
    }

    #[tokio::test(start_paused = true)]
    async fn sighup_reloads_at_once_and_forces_a_pending_file_reload() {
        use Trigger::{File, Signal};
        let start = Instant::now();
        let mut rx = send(&[(10, Signal)]);
        assert_eq!(next_reload(&mut rx).await, Some(true));
        assert_eq!(start.elapsed(), Duration::from_millis(10), "not debounced");

        let mut rx = send(&[(0, File), (50, Signal)]);
        assert_eq!(next_reload(&mut rx).await, Some(true));
    }

    #[tokio::test]
    async fn the_reloader_stops_once_nothing_can_trigger_it() {
        let (tx, mut rx) = mpsc::channel(1);
        drop(tx);
        assert_eq!(next_reload(&mut rx).await, None);
    }
}
