//! [`ConnInfo`]: what the server knows about the connection a request came on.

use std::net::SocketAddr;

/// Facts about the client connection, put in every request's extensions by the server
/// (`server::conn`) and read by the forwarder (`X-Forwarded-*`).
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    /// The peer, IPv4-mapped IPv6 addresses written as IPv4.
    pub peer: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
}
