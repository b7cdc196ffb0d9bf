//! The HTTPS listener's rustls configuration: the configured PEM chain and key (read with
//! `rustls-pki-types`), ALPN `h2` then `http/1.1`, and an `http/1.1`-only twin for refusing
//! connections over the limit.

use std::sync::Arc;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsFiles;
use crate::http::BoxError;

/// The TLS acceptors of the public listener: the configured one, and the same
/// certificate offering only `http/1.1` for refusals (see `listener`).
#[derive(Clone)]
pub struct TlsAcceptors {
    pub serve: TlsAcceptor,
    pub refuse: TlsAcceptor,
}

impl std::fmt::Debug for TlsAcceptors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsAcceptors").finish_non_exhaustive()
    }
}

impl TlsAcceptors {
    /// Reads `files` and builds both acceptors.
    pub fn load(files: &TlsFiles) -> Result<TlsAcceptors, BoxError> {
        let serve = acceptor(files)?;
        let refuse = http1_only(&serve);
        Ok(TlsAcceptors { serve, refuse })
    }
}

fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor, BoxError> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    let cert_pem = read(&files.cert)?;
    let key_pem = read(&files.key)?;
    let certs = CertificateDer::pem_slice_iter(&cert_pem).collect::<Result<Vec<_>, _>>()?;
    if certs.is_empty() {
        return Err(format!("{} holds no certificate", files.cert.display()).into());
    }
    let key = match PrivateKeyDer::from_pem_slice(&key_pem) {
        Ok(key) => key,
        Err(pem::Error::NoItemsFound) => {
            return Err(format!("{} holds no private key", files.key.display()).into())
        }
        Err(e) => return Err(e.into()),
    };
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The same certificate and key offering only `http/1.1`: over-limit connections are
/// answered with one HTTP/1.1 503, which an HTTP/2 client can read only if it falls back.
fn http1_only(acceptor: &TlsAcceptor) -> TlsAcceptor {
    let mut config = (**acceptor.config()).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsAcceptor::from(Arc::new(config))
}
