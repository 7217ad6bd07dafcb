//! A throw-away certificate authority for the test ground: serving certificates for loopback,
//! client certificates (CN = user, O = groups) and a service-account signing key.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// A certificate and its key, as PEM files on disk.
#[derive(Clone, Debug)]
pub struct CertFiles {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PKCS#8 PEM).
    pub key: PathBuf,
}

/// A CA whose files live in `dir`.
pub struct Pki {
    dir: PathBuf,
    ca_params: CertificateParams,
    ca_key: KeyPair,
    /// The CA certificate (PEM file).
    pub ca: PathBuf,
}

impl Pki {
    /// Creates a new CA in `dir`.
    pub fn new(dir: &Path) -> Result<Pki> {
        std::fs::create_dir_all(dir)?;
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "registrar-test-ca");
        ca_params.distinguished_name = dn;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let ca = dir.join("ca.crt");
        std::fs::write(&ca, ca_cert.pem())?;
        Ok(Pki {
            dir: dir.to_path_buf(),
            ca_params,
            ca_key,
            ca,
        })
    }

    fn issue(&self, name: &str, params: CertificateParams) -> Result<CertFiles> {
        let key = KeyPair::generate()?;
        let issuer = Issuer::from_params(&self.ca_params, &self.ca_key);
        let cert = params.signed_by(&key, &issuer)?;
        let files = CertFiles {
            cert: self.dir.join(format!("{name}.crt")),
            key: self.dir.join(format!("{name}.key")),
        };
        std::fs::write(&files.cert, cert.pem())
            .with_context(|| format!("writing {}", files.cert.display()))?;
        std::fs::write(&files.key, key.serialize_pem())?;
        Ok(files)
    }

    /// A serving (and client) certificate for `localhost`, 127.0.0.1 and ::1.
    pub fn serving(&self, name: &str) -> Result<CertFiles> {
        let mut params = CertificateParams::new(vec!["localhost".to_string()])?;
        params
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        params.subject_alt_names.push(SanType::IpAddress(IpAddr::V6(
            std::net::Ipv6Addr::LOCALHOST,
        )));
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.issue(name, params)
    }

    /// A client certificate for user `cn` in `groups` (Kubernetes reads O as groups; etcd reads CN
    /// as the user name).
    pub fn client(&self, cn: &str, groups: &[&str]) -> Result<CertFiles> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, cn);
        for g in groups {
            params.distinguished_name.push(DnType::OrganizationName, *g);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let file_name: String = cn
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        self.issue(&format!("client-{file_name}"), params)
    }

    /// A key pair for signing service-account tokens: (private key, public key) PEM files.
    pub fn service_account_key(&self) -> Result<(PathBuf, PathBuf)> {
        let key = KeyPair::generate()?;
        let private = self.dir.join("sa.key");
        let public = self.dir.join("sa.pub");
        std::fs::write(&private, key.serialize_pem())?;
        std::fs::write(&public, key.public_key_pem())?;
        Ok((private, public))
    }
}
