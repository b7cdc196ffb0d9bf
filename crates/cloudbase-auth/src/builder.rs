//! [`ClientBuilder`]: where CloudBase is and how to call it, with defaults that suit any
//! program signing users in. Nothing here reads a file format: a program keeps its own
//! configuration and hands the values over (the gateway maps its `[cloudbase]` table).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::client::Client;
use crate::error::Error;
use crate::{IntrospectAuth, Secret};

/// Extra trusted root certificates, beside the platform's.
#[derive(Clone)]
#[non_exhaustive]
pub enum RootCerts {
    /// PEM text holding one or more certificates.
    Pem(Vec<u8>),
    /// A PEM file holding one or more certificates, read by [`ClientBuilder::build`].
    PemFile(PathBuf),
}

impl fmt::Debug for RootCerts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RootCerts::Pem(pem) => write!(f, "Pem({} bytes)", pem.len()),
            RootCerts::PemFile(path) => f.debug_tuple("PemFile").field(path).finish(),
        }
    }
}

impl RootCerts {
    /// Where the certificates come from, for errors.
    pub(crate) fn origin(&self) -> String {
        match self {
            RootCerts::Pem(_) => "PEM text".to_owned(),
            RootCerts::PemFile(path) => path.display().to_string(),
        }
    }
}

/// Builds a [`Client`]; start from [`Client::builder`]. `Debug` never shows the secret.
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    pub(crate) base_url: String,
    pub(crate) client_id: String,
    pub(crate) client_secret: Option<Secret>,
    pub(crate) device_id: String,
    pub(crate) introspect_auth: IntrospectAuth,
    pub(crate) timeout: Duration,
    pub(crate) root_certs: Vec<RootCerts>,
    pub(crate) user_agent: String,
}

/// `x-device-id` when none is set.
pub const DEFAULT_DEVICE_ID: &str = "cloudbase-auth";
/// The per-call bound when none is set.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

impl ClientBuilder {
    pub(crate) fn new(base_url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            base_url: base_url.into(),
            client_id: String::new(),
            client_secret: None,
            device_id: DEFAULT_DEVICE_ID.to_owned(),
            introspect_auth: IntrospectAuth::Bearer,
            timeout: DEFAULT_TIMEOUT,
            root_certs: Vec::new(),
            user_agent: concat!("cloudbase-auth/", env!("CARGO_PKG_VERSION")).to_owned(),
        }
    }

    /// Sent as `?client_id=` and in Basic credentials on calls not made for a user.
    /// Default empty: no `client_id` is sent.
    pub fn client_id(mut self, client_id: impl Into<String>) -> Self {
        self.client_id = client_id.into();
        self
    }

    /// With a secret, calls not made for a user carry Basic client credentials. An empty
    /// secret is the same as none. Default none.
    pub fn client_secret(mut self, secret: Secret) -> Self {
        self.client_secret = (!secret.is_empty()).then_some(secret);
        self
    }

    /// Sent as `x-device-id` when a call does not set its own. Default
    /// [`DEFAULT_DEVICE_ID`].
    pub fn device_id(mut self, device_id: impl Into<String>) -> Self {
        self.device_id = device_id.into();
        self
    }

    /// How [`Client::introspect`] authenticates. Default [`IntrospectAuth::Bearer`].
    pub fn introspect_auth(mut self, mode: IntrospectAuth) -> Self {
        self.introspect_auth = mode;
        self
    }

    /// Bound on each call, connecting included. Default [`DEFAULT_TIMEOUT`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Trusts `certs` beside the platform's roots (a private CA, a test server).
    pub fn extra_root_certs(mut self, certs: RootCerts) -> Self {
        self.root_certs.push(certs);
        self
    }

    /// `User-Agent` of every call. Default `cloudbase-auth/<version>`.
    pub fn user_agent(mut self, user_agent: impl Into<String>) -> Self {
        self.user_agent = user_agent.into();
        self
    }

    /// The client: rustls with the platform's roots plus any extra ones, the timeout on
    /// every call, no redirects, and up to 1024 idle connections kept per host. Fails when
    /// the base URL is not an `http://` or `https://` URL, the device id or user agent is
    /// not a header value, or root certificates cannot be read.
    pub fn build(self) -> Result<Client, Error> {
        Client::from_builder(self)
    }
}
