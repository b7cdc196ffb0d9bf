//! The HTTPS listener's rustls configuration: the configured PEM chain and key, ALPN `h2`
//! then `http/1.1` (and an `http/1.1`-only twin for refusing connections over the limit).

use std::sync::Arc;

use tokio_rustls::TlsAcceptor;

use crate::config::TlsFiles;
use crate::response::BoxError;

pub fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor, BoxError> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    let cert_pem = read(&files.cert)?;
    let key_pem = read(&files.key)?;
    let certs = rustls_pemfile::certs(&mut cert_pem.as_slice()).collect::<Result<Vec<_>, _>>()?;
    if certs.is_empty() {
        return Err(format!("{} holds no certificate", files.cert.display()).into());
    }
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())?
        .ok_or_else(|| format!("{} holds no private key", files.key.display()))?;
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
pub fn http1_only(acceptor: &TlsAcceptor) -> TlsAcceptor {
    let mut config = (**acceptor.config()).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsAcceptor::from(Arc::new(config))
}
