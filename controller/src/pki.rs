//! The controller's certificate authority: made by `paddock-controller init`,
//! it signs the controller's own certificate and, at enrolment, each node's.
//!
//! Identities live in the subject common name: `paddock-controller` for the
//! controller, `paddock-node:<name>` for a node. The CA signs nothing else,
//! so a node can never present itself as the controller or as another node.
//! Node certificates are valid from the moment they are signed for
//! [`NODE_CERT_VALIDITY_DAYS`]; removing a node revokes every certificate
//! issued to its name until then (the controller refuses a node certificate
//! whose notBefore is not after the node's removal). Rotation is future work.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// Common name of the controller's certificate.
pub const CONTROLLER_CN: &str = "paddock-controller";
/// Prefix of a node certificate's common name.
pub const NODE_CN_PREFIX: &str = "paddock-node:";
/// How long a node certificate is valid: ten years, as LXD's; revocation by
/// node removal, not expiry, is how one is withdrawn.
pub const NODE_CERT_VALIDITY_DAYS: i64 = 3650;

/// Why a certificate operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("subject_alt_names: {0:?} is neither an IP address nor a DNS name")]
    BadSan(String),
    #[error("csr_pem: not a valid PEM certificate signing request: {0}")]
    BadCsr(rcgen::Error),
    #[error("{0} cannot be a certificate's notBefore")]
    BadTime(chrono::DateTime<chrono::Utc>),
}

/// PEM files of the controller's TLS identity and CA, under `<data_dir>/tls/`.
pub struct Pki {
    pub ca_cert_pem: String,
    ca_key_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

fn tls_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("tls")
}

/// The CA certificate that agents and CLI users must trust.
pub fn ca_path(data_dir: &Path) -> PathBuf {
    tls_dir(data_dir).join("ca.crt")
}

fn read(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|source| PkiError::Io {
        op: "reading",
        path: path.to_owned(),
        source,
    })
}

fn write(path: &Path, contents: &str, mode: u32) -> Result<(), PkiError> {
    let io = |op, source| PkiError::Io {
        op,
        path: path.to_owned(),
        source,
    };
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(|e| io("creating", e))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| io("writing", e))
}

fn san(name: &str) -> Result<SanType, PkiError> {
    if let Ok(ip) = name.parse::<std::net::IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if !valid {
        return Err(PkiError::BadSan(name.to_owned()));
    }
    Ok(SanType::DnsName(
        name.to_owned()
            .try_into()
            .map_err(|_| PkiError::BadSan(name.to_owned()))?,
    ))
}

/// Parameters of a leaf certificate for `common_name`, usable as both a TLS
/// server and client identity.
fn leaf_params(common_name: &str, sans: &[String]) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::default();
    let mut subject = DistinguishedName::new();
    subject.push(DnType::CommonName, common_name);
    params.distinguished_name = subject;
    params.subject_alt_names = sans.iter().map(|s| san(s)).collect::<Result<_, _>>()?;
    params.is_ca = IsCa::NoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    Ok(params)
}

impl Pki {
    /// Creates the CA and the controller's certificate (with `sans` plus the
    /// loopback names) under `<data_dir>/tls/`.
    pub fn create(data_dir: &Path, sans: &[String]) -> Result<Self, PkiError> {
        let dir = tls_dir(data_dir);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|source| PkiError::Io {
                op: "creating",
                path: dir.clone(),
                source,
            })?;
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::default();
        let mut subject = DistinguishedName::new();
        subject.push(DnType::CommonName, "Paddock CA");
        ca_params.distinguished_name = subject;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, &ca_key);

        let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
        for extra in sans {
            if !names.contains(extra) {
                names.push(extra.clone());
            }
        }
        let key = KeyPair::generate()?;
        let cert = leaf_params(CONTROLLER_CN, &names)?.signed_by(&key, &issuer)?;
        let pki = Self {
            ca_cert_pem: ca_cert.pem(),
            ca_key_pem: ca_key.serialize_pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        write(&dir.join("ca.crt"), &pki.ca_cert_pem, 0o644)?;
        write(&dir.join("ca.key"), &pki.ca_key_pem, 0o600)?;
        write(&dir.join("controller.crt"), &pki.cert_pem, 0o644)?;
        write(&dir.join("controller.key"), &pki.key_pem, 0o600)?;
        Ok(pki)
    }

    /// Loads what `create` wrote.
    pub fn load(data_dir: &Path) -> Result<Self, PkiError> {
        let dir = tls_dir(data_dir);
        Ok(Self {
            ca_cert_pem: read(&dir.join("ca.crt"))?,
            ca_key_pem: read(&dir.join("ca.key"))?,
            cert_pem: read(&dir.join("controller.crt"))?,
            key_pem: read(&dir.join("controller.key"))?,
        })
    }

    /// Signs a node's CSR. Only the CSR's public key is used: the subject is
    /// set to the enrolling node's name and the SANs to the validated `sans`.
    /// Signs a node certificate valid from `not_before` (whole seconds) for
    /// [`NODE_CERT_VALIDITY_DAYS`].
    pub fn sign_node(
        &self,
        node_name: &str,
        csr_pem: &str,
        sans: &[String],
        not_before: chrono::DateTime<chrono::Utc>,
    ) -> Result<String, PkiError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(PkiError::BadCsr)?;
        let ca_key = KeyPair::from_pem(&self.ca_key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&self.ca_cert_pem, &ca_key)?;
        let mut params = leaf_params(&format!("{NODE_CN_PREFIX}{node_name}"), sans)?;
        let from = time::OffsetDateTime::from_unix_timestamp(not_before.timestamp())
            .map_err(|_| PkiError::BadTime(not_before))?;
        params.not_before = from;
        params.not_after = from + time::Duration::days(NODE_CERT_VALIDITY_DAYS);
        let signed = CertificateSigningRequestParams {
            params,
            public_key: csr.public_key,
        }
        .signed_by(&issuer)?;
        Ok(signed.pem())
    }
}

/// The notBefore of a DER certificate, if it parses.
pub fn not_before(der: &[u8]) -> Option<chrono::DateTime<chrono::Utc>> {
    facts(der).not_before
}

/// The subject common name of a DER certificate, if it has one.
pub fn common_name(der: &[u8]) -> Option<String> {
    facts(der).common_name
}

/// What the controller reads from a client certificate.
#[derive(Debug, Clone, Default)]
struct CertFacts {
    common_name: Option<String>,
    not_before: Option<chrono::DateTime<chrono::Utc>>,
}

/// Certificates parsed before, by their DER bytes: each node presents the same certificate
/// with every heartbeat, and parsing it each time was ~6% of a quiet controller's CPU at
/// 10,000 nodes (perf). Only certificates the TLS handshake verified get here; revocation is
/// still read from the store per call. Forgotten all at once at [`SEEN_CERTS_MAX`].
static SEEN_CERTS: std::sync::OnceLock<
    std::sync::Mutex<std::collections::HashMap<Box<[u8]>, CertFacts>>,
> = std::sync::OnceLock::new();
const SEEN_CERTS_MAX: usize = 100_000;

fn facts(der: &[u8]) -> CertFacts {
    let seen = SEEN_CERTS.get_or_init(Default::default);
    let lock = || {
        seen.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    };
    if let Some(facts) = lock().get(der) {
        return facts.clone();
    }
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return CertFacts::default();
    };
    let facts = CertFacts {
        common_name: cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|name| name.as_str().ok())
            .map(str::to_owned),
        not_before: chrono::DateTime::from_timestamp(cert.validity().not_before.timestamp(), 0),
    };
    let mut seen = lock();
    if seen.len() >= SEEN_CERTS_MAX {
        seen.clear();
    }
    seen.insert(der.into(), facts.clone());
    facts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_nodes_with_the_enrolled_name_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = Pki::create(dir.path(), &["ctl.example".into()]).expect("create");
        let loaded = Pki::load(dir.path()).expect("load");
        assert_eq!(loaded.ca_cert_pem, pki.ca_cert_pem);

        // A node asks for the controller's name in its CSR; it gets its own.
        let key = KeyPair::generate().expect("key");
        let mut wanted = CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("params");
        wanted
            .distinguished_name
            .push(DnType::CommonName, CONTROLLER_CN);
        let csr = wanted
            .serialize_request(&key)
            .expect("csr")
            .pem()
            .expect("pem");
        let at = chrono::DateTime::from_timestamp(1_796_083_200, 0).expect("time");
        let cert_pem = pki
            .sign_node("node1", &csr, &["127.0.0.1".into()], at)
            .expect("sign");
        let der = rustls_pemfile_der(&cert_pem);
        assert_eq!(common_name(&der).as_deref(), Some("paddock-node:node1"));
        assert_eq!(not_before(&der), Some(at), "valid from the signing time");
        let remembered = SEEN_CERTS
            .get()
            .and_then(|seen| seen.lock().ok()?.get(der.as_slice()).cloned())
            .expect("parsed once, then remembered");
        assert_eq!(
            remembered.common_name.as_deref(),
            Some("paddock-node:node1")
        );
        assert_eq!(common_name(b"not a certificate"), None);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("parse");
        assert_eq!(
            cert.validity().not_after.timestamp() - at.timestamp(),
            NODE_CERT_VALIDITY_DAYS * 86_400
        );
        let controller = rustls_pemfile_der(&pki.cert_pem);
        assert_eq!(common_name(&controller).as_deref(), Some(CONTROLLER_CN));

        assert!(matches!(
            pki.sign_node("node1", "garbage", &[], at),
            Err(PkiError::BadCsr(_))
        ));
        assert!(matches!(
            pki.sign_node("node1", &csr, &["bad name!".into()], at),
            Err(PkiError::BadSan(_))
        ));
    }

    fn rustls_pemfile_der(pem: &str) -> Vec<u8> {
        let (_, parsed) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("pem");
        parsed.contents
    }
}
