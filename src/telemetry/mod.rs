//! Logs and traces: where log lines go and in which format ([`init`]), and OpenTelemetry
//! spans and their export ([`trace`]). The access log and the layer that starts each
//! request's span are layers of the stack (`stack::access_log`, `stack::trace`).
//!
//! Placed just above `config` in the import order (it reads `[telemetry]`) and below
//! `cache`, whose validation flights are spans.

pub mod trace;

use tracing_subscriber::EnvFilter;

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Logs to stderr; level from `RUST_LOG`, default `info`.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: escape codes in a log file or collector are noise.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
