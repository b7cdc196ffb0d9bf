//! Operations (issue 14) over real sockets: per-route rate limits, OpenTelemetry traces and
//! hot reload,
//! with the real gateway, its embedded emulator (or a CloudBase stand-in) and real
//! upstreams on 127.0.0.1; the trace flush on SIGTERM with the real binary. One module
//! per feature.

mod rate_limit;
mod reload;
mod telemetry;
