//! The coordinator's agent CA: a self-signed ECDSA P-256 CA created once in the data dir (`agent-ca.pem`, and
//! `agent-ca.key` with mode 0600, checked at start), which signs the client certificates of enrolled agents. Only
//! the public key of an agent's CSR is used: subject, SANs, validity and usages are the coordinator's.
//!
//! Must not: log the CA key, or issue anything but short-lived client-auth certificates.

use std::path::Path;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};

use crate::principal::sha256_hex;

const CERT_FILE: &str = "agent-ca.pem";
const KEY_FILE: &str = "agent-ca.key";
/// Accepted clock skew between the coordinator and agents.
const SKEW: Duration = Duration::from_secs(300);

/// A certificate issued to an agent.
pub struct Issued {
    pub certificate_pem: String,
    /// Hex SHA-256 of the certificate's DER: the credential digest the session is matched by.
    pub digest: String,
    pub not_after_ms: i64,
}

/// The agent CA.
pub struct AgentCa {
    issuer: rcgen::Certificate,
    key: KeyPair,
    pem: String,
    /// The CA's subject (DER), to tell agent certificates from operators' without re-parsing the CA.
    subject: Vec<u8>,
    ttl: Duration,
}

impl std::fmt::Debug for AgentCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentCa")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl AgentCa {
    /// Loads the CA from `data_dir`, or creates it. `ttl` is the lifetime of issued certificates.
    pub fn load_or_create(data_dir: &Path, ttl: Duration) -> anyhow::Result<Self> {
        let cert_path = data_dir.join(CERT_FILE);
        let key_path = data_dir.join(KEY_FILE);
        if !key_path.exists() {
            create(&cert_path, &key_path)?;
        }
        ferry_store::check_private_file(&key_path)?;
        let key_pem = std::fs::read_to_string(&key_path)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", key_path.display()))?;
        let pem = std::fs::read_to_string(&cert_path)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", cert_path.display()))?;
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| anyhow::anyhow!("{} is not a PEM private key: {e}", key_path.display()))?;
        let params = CertificateParams::from_ca_cert_pem(&pem)
            .map_err(|e| anyhow::anyhow!("{} is not a CA certificate: {e}", cert_path.display()))?;
        // The issuer's name and key are what signing needs; re-signing does not change the trusted PEM.
        let issuer = params.self_signed(&key).map_err(|e| {
            anyhow::anyhow!(
                "the agent CA key does not match {}: {e}",
                cert_path.display()
            )
        })?;
        let subject = x509_parser::pem::parse_x509_pem(pem.as_bytes())
            .ok()
            .and_then(|(_, p)| p.parse_x509().ok().map(|c| c.subject().as_raw().to_vec()))
            .ok_or_else(|| anyhow::anyhow!("{} is not a PEM certificate", cert_path.display()))?;
        Ok(Self {
            issuer,
            key,
            subject,
            pem,
            ttl,
        })
    }

    /// The subject (RFC 4514 text) of a client certificate that this CA did not issue: an operator's certificate.
    /// `None` for agent certificates and unparsable ones.
    pub fn operator_subject(&self, der: &[u8]) -> Option<String> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        if cert.issuer().as_raw() == self.subject.as_slice() {
            return None;
        }
        Some(cert.subject().to_string())
    }

    /// The CA certificate (PEM) that agent certificates chain to.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// Issues a client certificate for the key of `csr_pem` to `agent_id`.
    pub fn issue(&self, csr_pem: &str, agent_id: &str) -> Result<Issued, String> {
        if csr_pem.len() > 16 * 1024 {
            return Err("the CSR is larger than 16 KiB".into());
        }
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| format!("the CSR is not a valid PKCS#10 request: {e}"))?;
        let now = time::OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, agent_id);
        name.push(DnType::OrganizationName, "ferry-agent");
        params.distinguished_name = name;
        let uri = format!("spiffe://ferry/agent/{agent_id}");
        params.subject_alt_names = vec![SanType::URI(
            uri.try_into()
                .map_err(|e| format!("agent id in a URI: {e}"))?,
        )];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = now - SKEW;
        params.not_after = now + self.ttl;
        let not_after_ms =
            i64::try_from(params.not_after.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX);
        params.serial_number = Some(SerialNumber::from_slice(&rand::random::<[u8; 16]>()));
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&csr.public_key, &self.issuer, &self.key)
            .map_err(|e| format!("signing the certificate: {e}"))?;
        Ok(Issued {
            digest: sha256_hex(cert.der()),
            certificate_pem: cert.pem(),
            not_after_ms,
        })
    }
}

fn create(cert_path: &Path, key_path: &Path) -> anyhow::Result<()> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(
        DnType::CommonName,
        format!("Ferry agent CA {}", ferry_core::ids::random_hex_id(8)),
    );
    name.push(DnType::OrganizationName, "ferry");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - SKEW;
    params.not_after = now + Duration::from_secs(10 * 365 * 24 * 3600);
    let cert = params.self_signed(&key)?;
    let mut file = ferry_store::create_private_file(key_path)
        .map_err(|e| anyhow::anyhow!("creating {}: {e}", key_path.display()))?;
    std::io::Write::write_all(&mut file, key.serialize_pem().as_bytes())?;
    file.sync_all()?;
    std::fs::write(cert_path, cert.pem())?;
    tracing::info!(path = %cert_path.display(), "created the agent CA");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_carry_the_agent_id_and_only_the_csr_key() {
        let dir = tempfile::tempdir().unwrap();
        let ca = AgentCa::load_or_create(dir.path(), Duration::from_secs(3600)).unwrap();
        let agent_key = KeyPair::generate().unwrap();
        let asked = CertificateParams::new(vec!["evil.example".into()]).unwrap();
        let csr = asked.serialize_request(&agent_key).unwrap().pem().unwrap();
        let issued = ca.issue(&csr, "agent-0123456789ab").unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(issued.certificate_pem.as_bytes()).unwrap();
        let cert = pem.parse_x509().unwrap();
        assert!(cert.subject().to_string().contains("agent-0123456789ab"));
        assert!(!cert.is_ca());
        let sans = format!("{:?}", cert.subject_alternative_name());
        assert!(
            !sans.contains("evil.example")
                && sans.contains("spiffe://ferry/agent/agent-0123456789ab"),
            "{sans}"
        );
        assert_eq!(cert.public_key().raw, agent_key.public_key_der().as_slice());
        let lifetime = cert.validity().not_after.timestamp()
            - time::OffsetDateTime::now_utc().unix_timestamp();
        assert!((3500..=3600).contains(&lifetime), "{lifetime}");
        // Reloaded from disk: the same CA.
        let again = AgentCa::load_or_create(dir.path(), Duration::from_secs(60)).unwrap();
        assert_eq!(again.pem(), ca.pem());
        assert!(ca.issue("not a csr", "agent-0123456789ab").is_err());
    }
}
