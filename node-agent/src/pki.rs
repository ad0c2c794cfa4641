//! The node's TLS identity: enrolled once with the join token, then used for
//! mutual TLS with the controller in both directions.
//!
//! The private key is generated here and never leaves the node; the
//! controller signs a certificate for it whose common name is
//! `paddock-node:<name>`. Only a peer presenting the controller's certificate
//! (`paddock-controller`, signed by the same CA) may call this agent.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use paddock_proto::v1;
use paddock_proto::v1::agent_registry_client::AgentRegistryClient;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tracing::{info, warn};

/// Common name of the only client this agent serves.
pub const CONTROLLER_CN: &str = "paddock-controller";

/// Why the node could not obtain or load its identity.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("generating the node key: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("controller address {address:?}: {reason}")]
    Address { address: String, reason: String },
}

/// PEM material of the node's identity.
#[derive(Clone)]
pub struct NodeIdentity {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl NodeIdentity {
    /// TLS settings for calling the controller as this node.
    pub fn client_tls(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
    }
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> PkiError + 'a {
    move |source| PkiError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

fn write(path: &Path, contents: &str, mode: u32) -> Result<(), PkiError> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(io("creating", path))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io("writing", path))
}

/// The host part of a URL such as `https://10.0.0.5:7444`, for the certificate's SAN.
pub fn host_of(url: &str) -> Result<String, PkiError> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e: http::uri::InvalidUri| PkiError::Address {
            address: url.to_owned(),
            reason: e.to_string(),
        })?;
    let host = uri.host().ok_or_else(|| PkiError::Address {
        address: url.to_owned(),
        reason: "has no host".to_owned(),
    })?;
    Ok(host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned())
}

/// Loads the node identity from `<state_dir>/tls`, enrolling with the
/// controller first if there is none (retrying until the controller answers).
pub async fn ensure_enrolled(
    state_dir: &Path,
    node_name: &str,
    controller: &str,
    controller_ca_file: &Path,
    join_token_file: &Path,
    advertised: &str,
) -> Result<NodeIdentity, PkiError> {
    let dir = state_dir.join("tls");
    let (ca, cert, key) = (
        dir.join("ca.crt"),
        dir.join("node.crt"),
        dir.join("node.key"),
    );
    if ca.exists() && cert.exists() && key.exists() {
        return Ok(NodeIdentity {
            ca_pem: fs::read_to_string(&ca).map_err(io("reading", &ca))?,
            cert_pem: fs::read_to_string(&cert).map_err(io("reading", &cert))?,
            key_pem: fs::read_to_string(&key).map_err(io("reading", &key))?,
        });
    }
    let ca_pem = fs::read_to_string(controller_ca_file)
        .map_err(io("reading the controller CA", controller_ca_file))?;
    let join_token = fs::read_to_string(join_token_file)
        .map_err(io("reading the join token", join_token_file))?;
    let join_token = join_token.trim();
    let key_pair = rcgen::KeyPair::generate()?;
    let mut sans = vec![host_of(advertised)?];
    if !sans.iter().any(|s| s == "127.0.0.1") {
        sans.push("127.0.0.1".to_owned());
    }
    let csr = rcgen::CertificateParams::new(sans.clone())?
        .serialize_request(&key_pair)?
        .pem()?;
    let endpoint = Endpoint::from_shared(controller.to_owned())
        .map_err(|e| PkiError::Address {
            address: controller.to_owned(),
            reason: e.to_string(),
        })?
        .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca_pem)))
        .map_err(|e| PkiError::Address {
            address: controller.to_owned(),
            reason: e.to_string(),
        })?
        .connect_timeout(Duration::from_secs(3));
    let mut client = AgentRegistryClient::new(endpoint.connect_lazy());
    let token: MetadataValue<_> =
        format!("Bearer {join_token}")
            .parse()
            .map_err(|_| PkiError::Address {
                address: controller.to_owned(),
                reason: "the join token is not ASCII".to_owned(),
            })?;
    let mut backoff = Duration::from_millis(200);
    let response = loop {
        let mut request = tonic::Request::new(v1::EnrollRequest {
            node_name: node_name.to_owned(),
            csr_pem: csr.clone(),
            subject_alt_names: sans.clone(),
        });
        request
            .metadata_mut()
            .insert("authorization", token.clone());
        match client.enroll(request).await {
            Ok(response) => break response.into_inner(),
            Err(status) => {
                warn!(controller, code = ?status.code(), message = status.message(), retry_in = ?backoff, "enrolment failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(io("creating", &dir))?;
    let identity = NodeIdentity {
        ca_pem: response.ca_pem,
        cert_pem: response.certificate_pem,
        key_pem: key_pair.serialize_pem(),
    };
    write(&key, &identity.key_pem, 0o600)?;
    write(&ca, &identity.ca_pem, 0o644)?;
    // The certificate last: its presence marks a complete enrolment.
    write(&cert, &identity.cert_pem, 0o644)?;
    info!(node = node_name, "enrolled with the controller");
    Ok(identity)
}

/// Whether the verified client certificate chain belongs to the controller.
pub fn is_controller(peer_certs: Option<&[impl AsRef<[u8]>]>) -> bool {
    peer_certs
        .and_then(|certs| certs.first())
        .and_then(|leaf| {
            let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
            let cn = cert
                .subject()
                .iter_common_name()
                .next()?
                .as_str()
                .ok()?
                .to_owned();
            Some(cn == CONTROLLER_CN)
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_of_urls() {
        assert_eq!(host_of("https://127.0.0.1:7444").expect("ip"), "127.0.0.1");
        assert_eq!(
            host_of("https://node1.example:7444").expect("dns"),
            "node1.example"
        );
        assert_eq!(host_of("https://[::1]:7444").expect("v6"), "::1");
        assert!(host_of("not a url").is_err());
    }

    #[test]
    fn only_the_controller_certificate_passes() {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = |cn: &str| {
            let mut params =
                rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("params");
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, cn);
            params.self_signed(&key).expect("cert").der().to_vec()
        };
        assert!(is_controller(Some(&[cert(CONTROLLER_CN)][..])));
        assert!(!is_controller(Some(&[cert("paddock-node:other")][..])));
        assert!(!is_controller(None::<&[Vec<u8>]>));
    }
}
