//! Who a node is on the wire: the naming scheme that ties a certificate to a
//! node id, the TLS material a node holds, and the rustls configurations
//! built from it (TLS 1.3 only, mutual authentication always, ring as the
//! crypto provider passed explicitly).
//!
//! # Naming
//!
//! A node's certificate carries the DNS subject alternative name
//! `node-<id>.<cluster-id>` (for example `node-3.prod`). A DNS name rather
//! than a URI was chosen because rustls checks DNS names natively: a dialer
//! connects with the server name of the node it means to reach, so the
//! standard server-name check proves the peer's id, and the acceptor checks
//! the dialer's certificate against the id its Hello claims with the same
//! webpki call. The cluster id is one DNS label starting with a letter.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use raft_core::types::NodeId;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

/// The ALPN protocol both sides must offer; a peer without it fails the
/// TLS handshake before any frame.
pub const ALPN: &[u8] = b"raft-quic/1";

/// A validated cluster id: 1 to 63 characters of `a-z`, `0-9` and `-`,
/// starting with a letter and not ending with `-` (one DNS label, so that
/// `node-<id>.<cluster-id>` is a valid DNS name).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClusterId(String);

/// Why a cluster id was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid cluster id {0:?}: use 1-63 of a-z, 0-9 and '-', starting with a letter, not ending with '-'"
)]
pub struct ClusterIdError(pub String);

impl ClusterId {
    /// Validates a cluster id.
    pub fn new(id: impl Into<String>) -> Result<ClusterId, ClusterIdError> {
        let id = id.into();
        let valid_characters = id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        let starts_with_letter = id.bytes().next().is_some_and(|b| b.is_ascii_lowercase());
        if id.len() > 63 || !valid_characters || !starts_with_letter || id.ends_with('-') {
            return Err(ClusterIdError(id));
        }
        Ok(ClusterId(id))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The DNS name node `node`'s certificate carries: `node-<id>.<cluster-id>`.
    pub fn node_dns_name(&self, node: NodeId) -> String {
        format!("node-{}.{}", node.get(), self.0)
    }
}

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The TLS material of one node: the cluster CA it trusts, its certificate
/// chain (leaf first) and its private key.
#[derive(Debug)]
pub struct NodeIdentity {
    /// The cluster CA: the only root trusted for peers.
    pub ca_certificate: CertificateDer<'static>,
    /// This node's certificate, then any intermediates.
    pub certificate_chain: Vec<CertificateDer<'static>>,
    /// This node's private key.
    pub private_key: PrivateKeyDer<'static>,
}

impl Clone for NodeIdentity {
    fn clone(&self) -> Self {
        NodeIdentity {
            ca_certificate: self.ca_certificate.clone(),
            certificate_chain: self.certificate_chain.clone(),
            private_key: self.private_key.clone_key(),
        }
    }
}

/// Why TLS material or a TLS configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// A PEM file or string did not hold what was expected.
    #[error("reading {what}: {reason}")]
    Pem {
        /// Which item (CA certificate, node certificate, private key).
        what: &'static str,
        /// The parser's reason.
        reason: String,
    },
    /// The PEM held no certificate.
    #[error("no certificate found in the {0}")]
    NoCertificate(&'static str),
    /// rustls refused the configuration (for example a key that does not
    /// match the certificate, or a CA it cannot parse).
    #[error("TLS configuration refused: {0}")]
    Tls(String),
}

impl NodeIdentity {
    /// Loads PEM text: the CA certificate, the node's certificate chain and
    /// its private key (PKCS#8, SEC1 or PKCS#1).
    pub fn from_pem(
        ca_pem: &str,
        certificate_pem: &str,
        key_pem: &str,
    ) -> Result<NodeIdentity, IdentityError> {
        let ca_certificate = CertificateDer::from_pem_slice(ca_pem.as_bytes())
            .map_err(|e| IdentityError::Pem { what: "CA certificate", reason: e.to_string() })?;
        let certificate_chain = CertificateDer::pem_slice_iter(certificate_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| IdentityError::Pem { what: "node certificate", reason: e.to_string() })?;
        if certificate_chain.is_empty() {
            return Err(IdentityError::NoCertificate("node certificate PEM"));
        }
        let private_key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| IdentityError::Pem { what: "private key", reason: e.to_string() })?;
        Ok(NodeIdentity { ca_certificate, certificate_chain, private_key })
    }

    /// Loads the three PEM files (see [`crate::certs::NodeFiles`] for the
    /// layout the certificate helper writes).
    pub fn from_pem_files(ca: &Path, certificate: &Path, key: &Path) -> Result<NodeIdentity, IdentityError> {
        let read = |path: &Path, what: &'static str| {
            std::fs::read_to_string(path)
                .map_err(|e| IdentityError::Pem { what, reason: format!("{}: {e}", path.display()) })
        };
        Self::from_pem(
            &read(ca, "CA certificate")?,
            &read(certificate, "node certificate")?,
            &read(key, "private key")?,
        )
    }

    fn roots(&self) -> Result<Arc<RootCertStore>, IdentityError> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_certificate.clone()).map_err(|e| IdentityError::Tls(e.to_string()))?;
        Ok(Arc::new(roots))
    }
}

/// The crypto provider everything here uses: ring, passed explicitly so a
/// second provider elsewhere in the process can never make rustls panic.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server side: TLS 1.3 only, and a client certificate chaining to the
/// cluster CA is required (the verifier's roots hold only that CA).
pub fn server_tls_config(identity: &NodeIdentity) -> Result<rustls::ServerConfig, IdentityError> {
    let provider = crypto_provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(identity.roots()?, Arc::clone(&provider))
        .build()
        .map_err(|e| IdentityError::Tls(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| IdentityError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.certificate_chain.clone(), identity.private_key.clone_key())
        .map_err(|e| IdentityError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// The client side: TLS 1.3 only, the cluster CA as the only root, and this
/// node's certificate presented to the server.
pub fn client_tls_config(identity: &NodeIdentity) -> Result<rustls::ClientConfig, IdentityError> {
    let mut config = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| IdentityError::Tls(e.to_string()))?
        .with_root_certificates(identity.roots()?)
        .with_client_auth_cert(identity.certificate_chain.clone(), identity.private_key.clone_key())
        .map_err(|e| IdentityError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// Checks that a verified peer certificate names node `claimed` of the
/// cluster. The chain itself was verified by rustls during the handshake;
/// this ties it to the id the peer claims.
pub fn certificate_names_node(
    certificate: &CertificateDer<'_>,
    cluster_id: &ClusterId,
    claimed: NodeId,
) -> Result<(), String> {
    let certificate =
        webpki::EndEntityCert::try_from(certificate).map_err(|e| format!("unparsable certificate: {e}"))?;
    let name = cluster_id.node_dns_name(claimed);
    let server_name = ServerName::try_from(name.as_str()).map_err(|e| format!("invalid name {name}: {e}"))?;
    certificate
        .verify_is_valid_for_subject_name(&server_name)
        .map_err(|_| format!("the certificate does not name {name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_ids_are_single_dns_labels() {
        for good in ["a", "prod", "test-1", "x9"] {
            assert!(ClusterId::new(good).is_ok(), "{good}");
        }
        for bad in ["", "1abc", "Prod", "a.b", "a-", "a_b", &"a".repeat(64)] {
            assert!(ClusterId::new(bad).is_err(), "{bad}");
        }
        assert_eq!(ClusterId::new("prod").unwrap().node_dns_name(NodeId(3)), "node-3.prod");
    }
}
