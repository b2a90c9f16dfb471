//! TLS server configuration from PEM files (rustls with the aws-lc-rs provider), reloadable.

use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A TLS acceptor configuration that SIGHUP can swap without touching open connections.
#[derive(Clone)]
pub struct ReloadableTls {
    current: Arc<RwLock<Arc<rustls::ServerConfig>>>,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
}

impl ReloadableTls {
    pub fn load(cert: &Path, key: &Path) -> Result<Self, String> {
        let cfg = build(cert, key)?;
        Ok(ReloadableTls {
            current: Arc::new(RwLock::new(Arc::new(cfg))),
            cert: cert.into(),
            key: key.into(),
        })
    }

    /// Re-reads the files; on error the previous configuration stays in use.
    pub fn reload(&self) -> Result<(), String> {
        let cfg = build(&self.cert, &self.key)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(cfg);
        Ok(())
    }

    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let cfg = self
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        tokio_rustls::TlsAcceptor::from(cfg)
    }
}

fn build(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("cannot read certificate {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad certificate PEM in {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("no certificate found in {}", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read private key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("certificate and key do not match or are unsupported: {e}"))
}
