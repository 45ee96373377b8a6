//! A certificate helper (rcgen): a cluster CA and node certificates, as PEM
//! in memory or on disk. Used by the tests, and meant for `raft-node certs`
//! and `cargo xtask cluster`.
//!
//! A node certificate carries the DNS name `node-<id>.<cluster-id>` (see
//! [`crate::identity`]) plus any extra IP or DNS names for the node's
//! address, and both the ServerAuth and ClientAuth usages, so one leaf
//! serves both directions of mutual TLS. Keys are ECDSA P-256.
//!
//! Files (see [`CaFiles`] and [`NodeFiles`]): `ca.pem` and `ca.key` for the
//! CA; `node-<id>.pem` and `node-<id>.key` for a node, with `ca.pem` beside
//! them. Private keys are written with mode 0600 on Unix.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use raft_core::types::NodeId;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

use crate::identity::{crypto_provider, ClusterId, IdentityError, NodeIdentity};

/// How long a CA certificate is valid, in years from January 1st of the
/// current year.
pub const CA_VALIDITY_YEARS: i32 = 20;
/// How long a node certificate is valid, in years from January 1st of the
/// current year.
pub const NODE_VALIDITY_YEARS: i32 = 10;

/// Why a certificate could not be made, loaded or saved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertificateError {
    /// rcgen refused to generate or sign.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// An extra subject name is neither an IP address nor a valid DNS name.
    #[error("invalid subject name {0:?}")]
    InvalidName(String),
    /// The issued certificate does not verify against the CA (for example a
    /// CA key loaded with another CA's certificate).
    #[error("the issued certificate does not verify against the CA: {0}")]
    SelfCheck(String),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The TLS material could not be loaded.
    #[error(transparent)]
    Identity(#[from] IdentityError),
}

/// A cluster's certificate authority: the only root nodes trust.
pub struct ClusterCa {
    cluster_id: ClusterId,
    issuer: Issuer<'static, KeyPair>,
    certificate_pem: String,
    certificate_der: CertificateDer<'static>,
    key_pem: String,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("ClusterCa").field("cluster_id", &self.cluster_id).finish_non_exhaustive()
    }
}

/// The CA's parameters, rebuilt the same way when a CA is loaded from PEM,
/// so the issuer name of new certificates matches the CA's subject.
fn ca_params(cluster_id: &ClusterId) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, format!("raft cluster {cluster_id} CA"));
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    set_validity(&mut params, CA_VALIDITY_YEARS);
    params
}

/// Valid from January 1st of the current year (slack for clock skew
/// between nodes), for `years`.
fn set_validity(params: &mut CertificateParams, years: i32) {
    let seconds = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    // 365.2425 days per year on average: exact enough to pick the year.
    let year = 1970 + (seconds / 31_556_952) as i32;
    params.not_before = rcgen::date_time_ymd(year, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + years, 1, 1);
}

impl ClusterCa {
    /// Generates a new CA for the cluster.
    pub fn generate(cluster_id: &ClusterId) -> Result<ClusterCa, CertificateError> {
        let key = KeyPair::generate()?;
        let params = ca_params(cluster_id);
        let certificate = params.self_signed(&key)?;
        Ok(ClusterCa {
            cluster_id: cluster_id.clone(),
            certificate_pem: certificate.pem(),
            certificate_der: certificate.der().clone(),
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads a CA made by [`ClusterCa::generate`] from its certificate and key PEM.
    pub fn from_pem(
        cluster_id: &ClusterId,
        certificate_pem: &str,
        key_pem: &str,
    ) -> Result<ClusterCa, CertificateError> {
        use rustls::pki_types::pem::PemObject;
        let key = KeyPair::from_pem(key_pem)?;
        let certificate_der = CertificateDer::from_pem_slice(certificate_pem.as_bytes())
            .map_err(|e| IdentityError::Pem { what: "CA certificate", reason: e.to_string() })?;
        Ok(ClusterCa {
            cluster_id: cluster_id.clone(),
            certificate_pem: certificate_pem.to_string(),
            certificate_der,
            key_pem: key_pem.to_string(),
            issuer: Issuer::new(ca_params(cluster_id), key),
        })
    }

    /// The cluster this CA serves.
    pub fn cluster_id(&self) -> &ClusterId {
        &self.cluster_id
    }

    /// The CA certificate, PEM.
    pub fn certificate_pem(&self) -> &str {
        &self.certificate_pem
    }

    /// The CA's private key, PEM. Keep it off the nodes.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Issues node `node`'s certificate: the DNS name `node-<id>.<cluster-id>`,
    /// plus `extra_names` (each an IP address or a DNS name: the node's
    /// address), both TLS usages. The result is checked against the CA
    /// before it is returned.
    pub fn issue_node(
        &self,
        node: NodeId,
        extra_names: &[String],
    ) -> Result<NodeCertificate, CertificateError> {
        let key = KeyPair::generate()?;
        let node_name = self.cluster_id.node_dns_name(node);
        let mut params = CertificateParams::default();
        let mut distinguished = DistinguishedName::new();
        distinguished.push(DnType::CommonName, node_name.clone());
        params.distinguished_name = distinguished;
        params.subject_alt_names = std::iter::once(&node_name)
            .chain(extra_names)
            .map(|name| subject_name(name))
            .collect::<Result<_, _>>()?;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, NODE_VALIDITY_YEARS);
        let certificate = params.signed_by(&key, &self.issuer)?;
        self.check_issued(certificate.der(), &node_name)?;
        Ok(NodeCertificate {
            node,
            certificate_pem: certificate.pem(),
            key_pem: key.serialize_pem(),
            ca_pem: self.certificate_pem.clone(),
        })
    }

    /// Verifies a fresh leaf both ways it will be used: as a client
    /// certificate, and as a server certificate for its node name.
    fn check_issued(&self, leaf: &CertificateDer<'_>, node_name: &str) -> Result<(), CertificateError> {
        let self_check = |e: &dyn std::fmt::Display| CertificateError::SelfCheck(e.to_string());
        let mut roots = RootCertStore::empty();
        roots.add(self.certificate_der.clone()).map_err(|e| self_check(&e))?;
        let roots = Arc::new(roots);
        let now = UnixTime::now();
        let client = WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), crypto_provider())
            .build()
            .map_err(|e| self_check(&e))?;
        client.verify_client_cert(leaf, &[], now).map_err(|e| self_check(&e))?;
        let server = WebPkiServerVerifier::builder_with_provider(roots, crypto_provider())
            .build()
            .map_err(|e| self_check(&e))?;
        let name = ServerName::try_from(node_name.to_string()).map_err(|e| self_check(&e))?;
        server.verify_server_cert(leaf, &[], &name, &[], now).map_err(|e| self_check(&e))?;
        Ok(())
    }

    /// Writes `ca.pem` and `ca.key` into `directory` (created if missing).
    pub fn write_pem_files(&self, directory: &Path) -> Result<CaFiles, CertificateError> {
        create_directory(directory)?;
        let files = CaFiles::in_directory(directory);
        write_file(&files.certificate, &self.certificate_pem, false)?;
        write_file(&files.key, &self.key_pem, true)?;
        Ok(files)
    }

    /// Reads a CA written by [`ClusterCa::write_pem_files`].
    pub fn read_pem_files(cluster_id: &ClusterId, directory: &Path) -> Result<ClusterCa, CertificateError> {
        let files = CaFiles::in_directory(directory);
        Self::from_pem(cluster_id, &read_file(&files.certificate)?, &read_file(&files.key)?)
    }
}

/// Parses one extra subject name: an IP address or a DNS name.
fn subject_name(name: &str) -> Result<SanType, CertificateError> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let valid = ServerName::try_from(name).is_ok_and(|n| matches!(n, ServerName::DnsName(_)));
    let ia5 = name.try_into().map_err(|_| CertificateError::InvalidName(name.to_string()))?;
    if !valid {
        return Err(CertificateError::InvalidName(name.to_string()));
    }
    Ok(SanType::DnsName(ia5))
}

/// One node's certificate, key and the CA certificate, as PEM.
#[derive(Clone)]
pub struct NodeCertificate {
    /// The node.
    pub node: NodeId,
    /// The node's certificate.
    pub certificate_pem: String,
    /// The node's private key.
    pub key_pem: String,
    /// The cluster CA's certificate.
    pub ca_pem: String,
}

impl std::fmt::Debug for NodeCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCertificate").field("node", &self.node).finish_non_exhaustive()
    }
}

impl NodeCertificate {
    /// The TLS material for the transport.
    pub fn identity(&self) -> Result<NodeIdentity, IdentityError> {
        NodeIdentity::from_pem(&self.ca_pem, &self.certificate_pem, &self.key_pem)
    }

    /// Writes `ca.pem`, `node-<id>.pem` and `node-<id>.key` into `directory`.
    pub fn write_pem_files(&self, directory: &Path) -> Result<NodeFiles, CertificateError> {
        create_directory(directory)?;
        let files = NodeFiles::in_directory(directory, self.node);
        write_file(&files.ca, &self.ca_pem, false)?;
        write_file(&files.certificate, &self.certificate_pem, false)?;
        write_file(&files.key, &self.key_pem, true)?;
        Ok(files)
    }
}

/// Where a CA's files live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaFiles {
    /// `ca.pem`.
    pub certificate: PathBuf,
    /// `ca.key`.
    pub key: PathBuf,
}

impl CaFiles {
    /// The file names in `directory`.
    pub fn in_directory(directory: &Path) -> CaFiles {
        CaFiles { certificate: directory.join("ca.pem"), key: directory.join("ca.key") }
    }
}

/// Where a node's files live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeFiles {
    /// `ca.pem`.
    pub ca: PathBuf,
    /// `node-<id>.pem`.
    pub certificate: PathBuf,
    /// `node-<id>.key`.
    pub key: PathBuf,
}

impl NodeFiles {
    /// The file names of node `node` in `directory`.
    pub fn in_directory(directory: &Path, node: NodeId) -> NodeFiles {
        NodeFiles {
            ca: directory.join("ca.pem"),
            certificate: directory.join(format!("node-{}.pem", node.get())),
            key: directory.join(format!("node-{}.key", node.get())),
        }
    }

    /// Loads the TLS material from these files.
    pub fn identity(&self) -> Result<NodeIdentity, IdentityError> {
        NodeIdentity::from_pem_files(&self.ca, &self.certificate, &self.key)
    }
}

fn create_directory(directory: &Path) -> Result<(), CertificateError> {
    std::fs::create_dir_all(directory)
        .map_err(|source| CertificateError::Io { path: directory.to_path_buf(), source })
}

fn read_file(path: &Path) -> Result<String, CertificateError> {
    std::fs::read_to_string(path).map_err(|source| CertificateError::Io { path: path.to_path_buf(), source })
}

fn write_file(path: &Path, contents: &str, private: bool) -> Result<(), CertificateError> {
    use std::io::Write;
    let io_error = |source| CertificateError::Io { path: path.to_path_buf(), source };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(path).map_err(io_error)?;
    file.write_all(contents.as_bytes()).map_err(io_error)?;
    file.sync_all().map_err(io_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_name_the_node_and_its_addresses() {
        let cluster = ClusterId::new("unit").unwrap();
        let ca = ClusterCa::generate(&cluster).unwrap();
        let node = ca.issue_node(NodeId(4), &["127.0.0.1".into(), "db4.example".into()]).unwrap();
        let identity = node.identity().unwrap();
        let leaf = &identity.certificate_chain[0];
        assert!(crate::identity::certificate_names_node(leaf, &cluster, NodeId(4)).is_ok());
        assert!(crate::identity::certificate_names_node(leaf, &cluster, NodeId(5)).is_err());
        assert!(ca.issue_node(NodeId(1), &["not a name".into()]).is_err());
    }

    #[test]
    fn pem_files_round_trip_and_a_loaded_ca_still_issues() {
        let directory = tempfile::tempdir().unwrap();
        let cluster = ClusterId::new("files").unwrap();
        let ca = ClusterCa::generate(&cluster).unwrap();
        ca.write_pem_files(directory.path()).unwrap();
        let loaded = ClusterCa::read_pem_files(&cluster, directory.path()).unwrap();
        let node = loaded.issue_node(NodeId(2), &[]).unwrap();
        let files = node.write_pem_files(directory.path()).unwrap();
        assert_eq!(files, NodeFiles::in_directory(directory.path(), NodeId(2)));
        files.identity().unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&files.key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn a_key_from_another_ca_fails_the_self_check() {
        let cluster = ClusterId::new("mixed").unwrap();
        let first = ClusterCa::generate(&cluster).unwrap();
        let second = ClusterCa::generate(&cluster).unwrap();
        let mixed = ClusterCa::from_pem(&cluster, first.certificate_pem(), second.key_pem()).unwrap();
        assert!(matches!(mixed.issue_node(NodeId(1), &[]), Err(CertificateError::SelfCheck(_))));
    }
}
