//! Forward-auth: the gateway's validation, cache, route rules and identity headers for an
//! ingress that stays in the data path (nginx `auth_request`, ingress-nginx, Traefik
//! `ForwardAuth`, Caddy `forward_auth`, Envoy `ext_authz`). The ingress asks
//! `forward_auth.path` about each request; the gateway answers 200 with the identity
//! headers, or its own 401 / 403 / 503 (README "Behind an existing ingress").
//!
//! Three separable pieces: [`original`] recovers the original request from each ingress's
//! subrequest shape (pure); [`ForwardAuth`] decides it through the proxy path's own
//! pieces ([`crate::routing::Routes::decide`], [`crate::auth::Authenticator`]) and
//! answers; the divert `stack::forward_auth` is the whole coupling to the stack: one
//! branch before routing that hands the endpoint's requests to [`ForwardAuth`].
//!
//! Trade-off: the endpoint shares the main listener (the ingress already reaches it, and
//! one port is one thing less to secure), so its path is taken from the proxy's path
//! space; the configuration refuses a path that collides with a route prefix or with the
//! relay's prefix, and the divert sits before the relay's, so a raw spelling under the
//! endpoint that normalizes into the relay is still decided here.

pub mod original;
mod service;

pub use crate::rejection::X_GATEWAY_REJECTION;
pub use service::{routes, ForwardAuth, Target};
