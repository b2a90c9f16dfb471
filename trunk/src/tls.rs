//! Mutual TLS for the trunk: every node holds a certificate for `<node_id>.trunk.meridian`
//! signed by the cluster CA. The dialer verifies the listener's certificate names the node it
//! meant to reach; the listener reads the dialer's node id from its certificate. A certificate
//! from another CA fails the handshake.
//!
//! Also the CA and node certificates for `meridian trunk-cert` (rcgen, ECDSA P-256).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

use crate::wire::ALPN;

/// The DNS name suffix of node certificates.
pub const NAME_SUFFIX: &str = ".trunk.meridian";
/// The CA's subject (node certificates are issued under it).
const CA_NAME: &str = "meridian trunk CA";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what} {path}: {reason}")]
    File {
        what: &'static str,
        path: String,
        reason: String,
    },
    #[error("{0}")]
    Config(String),
}

/// The DNS name a node's certificate carries.
pub fn node_name(node: &str) -> String {
    format!("{}{NAME_SUFFIX}", node.to_ascii_lowercase())
}

/// The node id a certificate is for (its `*.trunk.meridian` name), if it has one.
pub fn node_of_cert(der: &CertificateDer<'_>) -> Option<String> {
    let cert = webpki::EndEntityCert::try_from(der).ok()?;
    let id = cert
        .valid_dns_names()
        .find_map(|n| n.strip_suffix(NAME_SUFFIX).map(str::to_string))?;
    let name = ServerName::try_from(node_name(&id)).ok()?;
    cert.verify_is_valid_for_subject_name(&name).ok()?;
    Some(id)
}

/// The CA, this node's chain and key, parsed once.
#[derive(Debug)]
pub struct TlsMaterial {
    ca: Vec<CertificateDer<'static>>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Clone for TlsMaterial {
    fn clone(&self) -> Self {
        TlsMaterial {
            ca: self.ca.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

impl TlsMaterial {
    pub fn from_pem_files(ca: &Path, cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let read = |what: &'static str, p: &Path| {
            std::fs::read(p).map_err(|e| TlsError::File {
                what,
                path: p.display().to_string(),
                reason: e.to_string(),
            })
        };
        Self::from_pem(
            &read("trunk.ca", ca)?,
            &read("trunk.cert", cert)?,
            &read("trunk.key", key)?,
        )
    }

    pub fn from_pem(ca: &[u8], cert: &[u8], key: &[u8]) -> Result<Self, TlsError> {
        let certs = |what: &'static str, pem: &[u8]| {
            let v: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem).collect();
            match v {
                Ok(v) if !v.is_empty() => Ok(v),
                Ok(_) => Err(TlsError::Config(format!(
                    "{what}: no certificate in the PEM"
                ))),
                Err(e) => Err(TlsError::Config(format!("{what}: bad PEM: {e}"))),
            }
        };
        let ca = certs("trunk.ca", ca)?;
        let chain = certs("trunk.cert", cert)?;
        let key = PrivateKeyDer::from_pem_slice(key)
            .map_err(|e| TlsError::Config(format!("trunk.key: no private key: {e}")))?;
        Ok(TlsMaterial { ca, chain, key })
    }

    /// The node id this node's certificate is for.
    pub fn own_node(&self) -> Option<String> {
        self.chain.first().and_then(node_of_cert)
    }

    fn roots(&self) -> Result<Arc<RootCertStore>, TlsError> {
        let mut roots = RootCertStore::empty();
        for c in &self.ca {
            roots
                .add(c.clone())
                .map_err(|e| TlsError::Config(format!("trunk.ca: {e}")))?;
        }
        Ok(Arc::new(roots))
    }

    /// The listener's QUIC config: TLS 1.3, the peer must present a certificate from the CA.
    pub fn server_crypto(&self) -> Result<Arc<quinn::crypto::rustls::QuicServerConfig>, TlsError> {
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots()?, provider())
            .build()
            .map_err(|e| TlsError::Config(format!("trunk.ca: {e}")))?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| TlsError::Config(format!("trunk.cert/trunk.key: {e}")))?;
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        let q = quinn::crypto::rustls::QuicServerConfig::try_from(cfg)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        Ok(Arc::new(q))
    }

    /// The dialer's QUIC config: the listener must present the CA's certificate for the name
    /// dialed; this node presents its own.
    pub fn client_crypto(&self) -> Result<Arc<quinn::crypto::rustls::QuicClientConfig>, TlsError> {
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| TlsError::Config(format!("trunk.cert/trunk.key: {e}")))?;
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        let q = quinn::crypto::rustls::QuicClientConfig::try_from(cfg)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        Ok(Arc::new(q))
    }
}

/// The peer's node id from its certificate on an established connection.
pub fn peer_node(conn: &quinn::Connection) -> Option<String> {
    let any = conn.peer_identity()?;
    let certs = any.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    certs.first().and_then(node_of_cert)
}

/// A PEM certificate and its PEM private key.
pub struct Pem {
    pub cert: String,
    pub key: String,
}

fn rc(e: rcgen::Error) -> TlsError {
    TlsError::Config(e.to_string())
}

fn ca_params() -> Result<rcgen::CertificateParams, TlsError> {
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(rc)?;
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, CA_NAME);
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    Ok(p)
}

/// A new cluster CA (valid 10 years).
pub fn make_ca() -> Result<Pem, TlsError> {
    let key = rcgen::KeyPair::generate().map_err(rc)?;
    let mut p = ca_params()?;
    let now = std::time::SystemTime::now();
    p.not_before = now.into();
    p.not_after = (now + std::time::Duration::from_secs(10 * 365 * 86_400)).into();
    let cert = p.self_signed(&key).map_err(rc)?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// A certificate for `node` (server and client authentication, valid `days`) issued by the
/// CA whose key is `ca_key_pem` (made by [`make_ca`]).
pub fn make_node_cert(ca_key_pem: &str, node: &str, days: u32) -> Result<Pem, TlsError> {
    let ca_key = rcgen::KeyPair::from_pem(ca_key_pem)
        .map_err(|e| TlsError::Config(format!("CA key: {e}")))?;
    let issuer = rcgen::Issuer::new(ca_params()?, ca_key);
    let key = rcgen::KeyPair::generate().map_err(rc)?;
    let mut p = rcgen::CertificateParams::new(vec![node_name(node)]).map_err(rc)?;
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, format!("meridian node {node}"));
    p.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    let now = std::time::SystemTime::now();
    p.not_before = (now - std::time::Duration::from_secs(300)).into();
    p.not_after = (now + std::time::Duration::from_secs(u64::from(days) * 86_400)).into();
    let cert = p.signed_by(&key, &issuer).map_err(rc)?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_certificates_name_their_node() {
        let ca = make_ca().unwrap();
        let n = make_node_cert(&ca.key, "fra-1", 30).unwrap();
        let m =
            TlsMaterial::from_pem(ca.cert.as_bytes(), n.cert.as_bytes(), n.key.as_bytes()).unwrap();
        assert_eq!(m.own_node().as_deref(), Some("fra-1"));
        m.server_crypto().unwrap();
        m.client_crypto().unwrap();
        // The CA itself names no node.
        let ca_der = CertificateDer::from_pem_slice(ca.cert.as_bytes()).unwrap();
        assert_eq!(node_of_cert(&ca_der), None);
    }

    #[test]
    fn bad_pem_is_a_clear_error() {
        let ca = make_ca().unwrap();
        let e = TlsMaterial::from_pem(b"junk", ca.cert.as_bytes(), ca.key.as_bytes()).unwrap_err();
        assert!(e.to_string().starts_with("trunk.ca: no certificate"), "{e}");
        let e = TlsMaterial::from_pem(ca.cert.as_bytes(), ca.cert.as_bytes(), b"nope").unwrap_err();
        assert!(
            e.to_string().starts_with("trunk.key: no private key"),
            "{e}"
        );
        let e = make_node_cert("not a key", "x", 1).err().unwrap();
        assert!(e.to_string().starts_with("CA key"), "{e}");
    }
}
