//! The HTTPS listener's rustls configuration: the configured PEM chain and key (read with
//! `rustls-pki-types`), ALPN `h2` then `http/1.1`, and an `http/1.1`-only twin for refusing
//! connections over the limit.
//!
//! The certificate is not baked into the `ServerConfig`: both acceptors ask one resolver
//! (`CurrentCert`) per handshake, which hands out the key pair in force from an
//! `ArcSwap`. A configuration reload ([`TlsAcceptors::reload`]) reads the files again and
//! swaps the pair in: the next handshake gets it, connections already up keep theirs, and
//! nothing is rebuilt or re-bound. The cost is one `ArcSwap` load per handshake, next to
//! the handshake's own signature.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsFiles;
use crate::http::BoxError;

/// The TLS acceptors of the public listener: the configured one, and the same
/// certificate offering only `http/1.1` for refusals (see `listener`).
#[derive(Clone)]
pub struct TlsAcceptors {
    pub serve: TlsAcceptor,
    pub refuse: TlsAcceptor,
    /// The key pair both hand out.
    current: Arc<CurrentCert>,
}

impl std::fmt::Debug for TlsAcceptors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsAcceptors").finish_non_exhaustive()
    }
}

impl TlsAcceptors {
    /// Reads `files` and builds both acceptors.
    pub fn load(files: &TlsFiles) -> Result<TlsAcceptors, BoxError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let current = Arc::new(CurrentCert(ArcSwap::from_pointee(certified_key(
            files, &provider,
        )?)));
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let serve = TlsAcceptor::from(Arc::new(config));
        let refuse = http1_only(&serve);
        Ok(TlsAcceptors {
            serve,
            refuse,
            current,
        })
    }

    /// Reads `files` again and serves their key pair from the next handshake on. On an
    /// error (a file unreadable, no certificate, a key that does not match it) the pair
    /// in force stays.
    pub fn reload(&self, files: &TlsFiles) -> Result<(), BoxError> {
        let provider = self.serve.config().crypto_provider().clone();
        let key = certified_key(files, &provider)?;
        self.current.0.store(Arc::new(key));
        Ok(())
    }
}

/// The key pair in force, read once per handshake.
#[derive(Debug)]
struct CurrentCert(ArcSwap<CertifiedKey>);

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// The chain and key of `files`, checked to belong together.
fn certified_key(files: &TlsFiles, provider: &CryptoProvider) -> Result<CertifiedKey, BoxError> {
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
    CertifiedKey::from_der(certs, key, provider)
        .map_err(|e| format!("{} and {}: {e}", files.cert.display(), files.key.display()).into())
}

/// The same certificate and key offering only `http/1.1`: over-limit connections are
/// answered with one HTTP/1.1 503, which an HTTP/2 client can read only if it falls back.
fn http1_only(acceptor: &TlsAcceptor) -> TlsAcceptor {
    let mut config = (**acceptor.config()).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsAcceptor::from(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed chain and key for `name`, written to `dir`.
    fn write_pair(dir: &std::path::Path, name: &str) -> TlsFiles {
        let cert = rcgen::generate_simple_self_signed(vec![name.to_owned()]).expect("rcgen");
        let files = TlsFiles {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
        };
        std::fs::write(&files.cert, cert.cert.pem()).unwrap();
        std::fs::write(&files.key, cert.key_pair.serialize_pem()).unwrap();
        files
    }

    /// The end-entity certificate the next handshake gets.
    fn served(acceptors: &TlsAcceptors) -> Vec<u8> {
        acceptors.current.0.load().cert[0].to_vec()
    }

    #[test]
    fn a_reload_swaps_the_pair_and_a_broken_one_keeps_the_pair_in_force() {
        let dir = tempfile::tempdir().unwrap();
        let first = write_pair(dir.path(), "first.test");
        let acceptors = TlsAcceptors::load(&first).expect("loads");
        let before = served(&acceptors);

        let second = write_pair(dir.path(), "second.test");
        acceptors.reload(&second).expect("reloads");
        assert_ne!(served(&acceptors), before);
        let after = served(&acceptors);

        // The first certificate with the second's key: refused, the second stays.
        let mismatched = TlsFiles {
            cert: first.cert.clone(),
            key: second.key.clone(),
        };
        let e = acceptors
            .reload(&mismatched)
            .expect_err("keys do not match");
        assert!(e.to_string().contains("first.test.crt"), "{e}");
        let missing = TlsFiles {
            cert: dir.path().join("gone.crt"),
            key: second.key,
        };
        assert!(acceptors.reload(&missing).is_err());
        assert_eq!(served(&acceptors), after);
    }
}
