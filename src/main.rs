//! The `cloudbase-gateway` binary: run the gateway, check a configuration, or run the
//! CloudBase Auth v2 emulator alone.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use cloudbase_emulator::Emulator;
use cloudbase_gateway::app;
use cloudbase_gateway::config::{Config, ConfigErrors, EmulatorConfig};
use cloudbase_gateway::telemetry::{self, LogFormat};

/// Authenticating reverse proxy for services whose users sign in with CloudBase Auth v2.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file.
    #[arg(
        long,
        global = true,
        env = "CLOUDBASE_GATEWAY_CONFIG",
        default_value = "config.toml"
    )]
    config: PathBuf,
    /// Log line format (level from RUST_LOG, default info).
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the configuration, print it with secrets redacted, exit 0 (or list every
    /// mistake with its key and exit 1).
    Check,
    /// Run only the CloudBase Auth v2 emulator (users and settings from [emulator]; no
    /// configuration file needed).
    Emulator {
        /// Address to listen on (default: emulator.listen from the configuration).
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
}

fn load(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| report(path, &e))
}

/// The emulator's part of the file; when `optional` and there is no file, the defaults.
fn load_emulator(path: &Path, optional: bool) -> Result<EmulatorConfig, ExitCode> {
    let env = |name: &str| std::env::var(name).ok();
    let loaded = if optional && !path.exists() {
        EmulatorConfig::from_toml_str_with_env("", env)
    } else {
        EmulatorConfig::load(path)
    };
    loaded.map_err(|e| report(path, &e))
}

fn report(path: &Path, errors: &ConfigErrors) -> ExitCode {
    eprintln!(
        "{}: configuration has {} error(s):",
        path.display(),
        errors.0.len()
    );
    for e in &errors.0 {
        eprintln!("  {e}");
    }
    ExitCode::from(1)
}

/// Completes on SIGTERM or SIGINT. The handlers are installed when this is called, not
/// when the future is first polled: a SIGTERM that arrives right after start-up must drain
/// the gateway (and flush its spans), not kill it with the default action.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let signals = {
        use tokio::signal::unix::{signal, SignalKind};
        (
            signal(SignalKind::terminate()).ok(),
            signal(SignalKind::interrupt()).ok(),
        )
    };
    async move {
        #[cfg(unix)]
        {
            let (term, int) = signals;
            let recv = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = recv(term) => {}
                _ = recv(int) => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        tracing::info!("shutdown signal received");
    }
}

/// The tokio runtime: one worker thread per CPU the process may run on. Confined to one
/// CPU (`taskset`, a cpuset, a cgroup quota of one core), a single-threaded runtime does the
/// same work without the work-stealing scheduler's hand-offs between its worker and the
/// I/O driver, which measured several percent of a proxied request (README "Performance").
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let one_cpu = std::thread::available_parallelism().is_ok_and(|n| n.get() == 1);
    let mut builder = if one_cpu {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    builder.enable_all().build()
}

/// Says which runtime [`runtime`] chose, once logging is up.
fn log_runtime(runtime: &tokio::runtime::Runtime) {
    let metrics = runtime.metrics();
    match runtime.handle().runtime_flavor() {
        tokio::runtime::RuntimeFlavor::CurrentThread => {
            tracing::info!("tokio runtime: current-thread (one CPU to run on)")
        }
        _ => tracing::info!(
            workers = metrics.num_workers(),
            "tokio runtime: multi-thread"
        ),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match runtime() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match cli.command {
        Some(Command::Check) => match load(&cli.config) {
            Ok(config) => {
                // A closed pipe (`check | head`) is not an error worth a panic.
                use std::io::Write;
                let mut out = std::io::stdout().lock();
                let _ = writeln!(
                    out,
                    "# {}: ok. The effective configuration, secrets redacted:",
                    cli.config.display()
                );
                let _ = writeln!(out, "{}", config.effective_toml());
                for warning in config.warnings() {
                    eprintln!("warning: {warning}");
                }
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Some(Command::Emulator { listen }) => {
            let default_path = std::env::var_os("CLOUDBASE_GATEWAY_CONFIG").is_none()
                && cli.config == Path::new("config.toml");
            let config = match load_emulator(&cli.config, default_path) {
                Ok(c) => c,
                Err(code) => return code,
            };
            telemetry::init(cli.log_format);
            runtime.block_on(run_emulator(config, listen))
        }
        None => {
            let config = match load(&cli.config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            telemetry::init(cli.log_format);
            log_runtime(&runtime);
            runtime.block_on(run_gateway(config, cli.config))
        }
    }
}

async fn run_emulator(config: EmulatorConfig, listen: Option<SocketAddr>) -> ExitCode {
    let addr = listen.unwrap_or(config.listen);
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot listen on {addr} (emulator): {e}");
            return ExitCode::from(1);
        }
    };
    let bound = listener.local_addr().unwrap_or(addr);
    eprintln!("emulator listening on {bound}");
    tracing::info!(%bound, users = config.options.users.len(), "CloudBase Auth v2 emulator started");
    let emulator = Emulator::new(&config.options);
    match emulator.serve(listener, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("emulator failed: {e}");
            ExitCode::from(1)
        }
    }
}

async fn run_gateway(config: Config, path: PathBuf) -> ExitCode {
    for warning in config.warnings() {
        tracing::warn!(key = %warning.key, "{}", warning.message);
    }
    let running = match app::start_from_file(config, path, shutdown_signal()).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    tracing::info!(
        listen = %running.addr,
        admin = %running.admin_addr,
        emulator = ?running.emulator_addr,
        "cloudbase-gateway started"
    );
    eprintln!("gateway listening on {}", running.addr);
    running.wait().await;
    ExitCode::SUCCESS
}
