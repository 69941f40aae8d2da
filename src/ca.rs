//! The sidecar's own certificate authority (HTTPS_PROXY mode).
//!
//! `tollgate ca init` makes an ECDSA P-256 CA whose certificate carries a
//! critical **name constraint** permitting only the intercepted provider
//! hosts: clients that trust it accept leaves for those hosts and nothing
//! else, so even a leaked CA key cannot impersonate any other site. The key
//! file is created mode 0600; the sidecar refuses a key readable by others
//! or a CA whose constraints do not cover every intercepted host.
//!
//! [`Minter`] issues (and caches) a short-lived leaf per intercepted host,
//! renewed well before it expires; it refuses any host outside the CA's
//! constraints or the intercepted set.

use std::collections::HashMap;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    NameConstraints, PublicKeyData,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;

/// The CA certificate's file name in the CA directory.
pub const CERT_FILE: &str = "ca.pem";
/// The CA key's file name in the CA directory (mode 0600).
pub const KEY_FILE: &str = "ca.key";
/// How long a CA made by `tollgate ca init` is valid.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long a minted leaf is valid.
const LEAF_VALIDITY: Duration = Duration::from_secs(24 * 3600);
/// A cached leaf is replaced once less than this is left.
const LEAF_RENEW_BEFORE: Duration = Duration::from_secs(6 * 3600);
/// Leaves start this long ago (client clocks drift).
const BACKDATE: Duration = Duration::from_secs(3600);

/// CA problems, each naming its file.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} already exists (remove it to make a new CA)")]
    Exists(PathBuf),
    #[error("{path}: readable by group or others (mode {mode:o}); chmod 600 it")]
    KeyPermissions { path: PathBuf, mode: u32 },
    #[error("{path}: not a usable certificate: {detail}")]
    BadCertificate { path: PathBuf, detail: String },
    #[error("{path}: not a usable key: {detail}")]
    BadKey { path: PathBuf, detail: String },
    #[error("the CA's name constraints ({permitted}) do not cover the intercepted host {host}; run `tollgate ca init` for the configured hosts")]
    NotCovered { host: String, permitted: String },
    #[error("no host to constrain the CA to (configure providers' hosts)")]
    NoHosts,
    #[error("{0:?} is an IP address: intercepted hosts are DNS names")]
    IpHost(String),
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("refusing to mint a certificate for {0}: not an intercepted host within the CA's constraints")]
    Refused(String),
    #[error("TLS key: {0}")]
    Tls(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CaError + '_ {
    move |source| CaError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Creates a CA in `dir` constrained to `hosts`: `ca.pem` and `ca.key`
/// (0600). Refuses to overwrite an existing CA.
pub fn init(dir: &Path, hosts: &[String]) -> Result<PathBuf, CaError> {
    if hosts.is_empty() {
        return Err(CaError::NoHosts);
    }
    if let Some(ip) = hosts.iter().find(|h| h.parse::<std::net::IpAddr>().is_ok()) {
        return Err(CaError::IpHost(ip.clone()));
    }
    let cert_path = dir.join(CERT_FILE);
    let key_path = dir.join(KEY_FILE);
    for p in [&cert_path, &key_path] {
        if p.exists() {
            return Err(CaError::Exists(p.clone()));
        }
    }
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "tollgate sidecar CA");
    dn.push(DnType::OrganizationName, "tollgate");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    // A DNS-only constraint says nothing about IP-address names (RFC
    // 5280): every IPv4 and IPv6 address is excluded explicitly.
    params.name_constraints = Some(NameConstraints {
        permitted_subtrees: hosts
            .iter()
            .map(|h| GeneralSubtree::DnsName(h.clone()))
            .collect(),
        excluded_subtrees: vec![
            GeneralSubtree::IpAddress(CidrSubnet::V4([0; 4], [0; 4])),
            GeneralSubtree::IpAddress(CidrSubnet::V6([0; 16], [0; 16])),
        ],
    });
    let now = SystemTime::now();
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + CA_VALIDITY).into();
    let cert = params.self_signed(&key)?;
    write_private(&key_path, key.serialize_pem().as_bytes())?;
    fs::write(&cert_path, cert.pem()).map_err(io_err(&cert_path))?;
    Ok(cert_path)
}

/// Creates `path` readable by its owner only, then writes it.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), CaError> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(path).map_err(io_err(path))?;
    f.write_all(bytes).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

/// What `tollgate ca show` prints about a CA certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    pub subject: String,
    pub not_before: String,
    pub not_after: String,
    /// Permitted DNS subtrees of the name constraint (empty: none).
    pub permitted: Vec<String>,
    /// Whether the constraint extension is marked critical.
    pub critical: bool,
    /// Whether every IPv4 and IPv6 address is excluded.
    pub excludes_all_ips: bool,
    /// The certificate's SubjectPublicKeyInfo (DER).
    pub spki: Vec<u8>,
    /// Whether it is valid now.
    pub valid_now: bool,
    pub is_ca: bool,
    pub pem: String,
}

impl Summary {
    /// Human-readable text, then the PEM.
    pub fn render(&self) -> String {
        format!(
            "subject          {}\nvalid            {} .. {}\nCA               {}\nname constraints {} (permitted DNS: {}; excluded: {})\n\n{}",
            self.subject,
            self.not_before,
            self.not_after,
            self.is_ca,
            if self.critical { "critical" } else { "NOT critical" },
            if self.permitted.is_empty() {
                "none: this CA is not constrained".to_string()
            } else {
                self.permitted.join(", ")
            },
            if self.excludes_all_ips {
                "every IP address"
            } else {
                "none"
            },
            self.pem
        )
    }
}

/// Reads the CA certificate in `dir`.
pub fn show(dir: &Path) -> Result<Summary, CaError> {
    let path = dir.join(CERT_FILE);
    let pem = fs::read_to_string(&path).map_err(io_err(&path))?;
    summarize(&path, &pem)
}

fn summarize(path: &Path, pem: &str) -> Result<Summary, CaError> {
    let bad = |detail: String| CaError::BadCertificate {
        path: path.to_path_buf(),
        detail,
    };
    let (_, parsed) =
        x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| bad(e.to_string()))?;
    let cert = parsed.parse_x509().map_err(|e| bad(e.to_string()))?;
    let mut permitted = Vec::new();
    let mut critical = false;
    let (mut no_v4, mut no_v6) = (false, false);
    if let Ok(Some(ext)) = cert.name_constraints() {
        critical = ext.critical;
        for subtree in ext.value.permitted_subtrees.iter().flatten() {
            if let x509_parser::extensions::GeneralName::DNSName(name) = subtree.base {
                permitted.push(name.to_ascii_lowercase());
            }
        }
        for subtree in ext.value.excluded_subtrees.iter().flatten() {
            if let x509_parser::extensions::GeneralName::IPAddress(net) = subtree.base {
                no_v4 |= net.len() == 8 && net.iter().all(|b| *b == 0);
                no_v6 |= net.len() == 32 && net.iter().all(|b| *b == 0);
            }
        }
    }
    let is_ca = cert
        .basic_constraints()
        .ok()
        .flatten()
        .is_some_and(|b| b.value.ca);
    Ok(Summary {
        subject: cert.subject().to_string(),
        not_before: cert.validity().not_before.to_string(),
        not_after: cert.validity().not_after.to_string(),
        permitted,
        critical,
        excludes_all_ips: no_v4 && no_v6,
        spki: cert.public_key().raw.to_vec(),
        valid_now: cert.validity().is_valid(),
        is_ca,
        pem: pem.to_string(),
    })
}

/// Whether `host` is within a permitted DNS subtree (RFC 5280: the name
/// itself or any name below it).
pub fn permitted_by(constraints: &[String], host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    constraints.iter().any(|c| {
        let c = c.trim_start_matches('.').to_ascii_lowercase();
        host == c || host.ends_with(&format!(".{c}"))
    })
}

/// The loaded CA, minting leaves for intercepted hosts.
pub struct Minter {
    issuer: Issuer<'static, KeyPair>,
    ca_der: CertificateDer<'static>,
    /// The CA's permitted DNS subtrees.
    constraints: Vec<String>,
    /// The hosts this sidecar intercepts (lowercase).
    hosts: Vec<String>,
    leaves: Mutex<HashMap<String, (Arc<CertifiedKey>, SystemTime)>>,
}

impl std::fmt::Debug for Minter {
    /// Never prints the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Minter")
            .field("constraints", &self.constraints)
            .field("hosts", &self.hosts)
            .finish()
    }
}

impl Minter {
    /// Loads the CA in `dir` for intercepting `hosts`: refuses a key file
    /// readable by group or others, a certificate that is not a constrained
    /// CA, and constraints that do not cover every host.
    pub fn load(dir: &Path, hosts: &[String]) -> Result<Minter, CaError> {
        let key_path = dir.join(KEY_FILE);
        let meta = fs::metadata(&key_path).map_err(io_err(&key_path))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(CaError::KeyPermissions {
                    path: key_path,
                    mode,
                });
            }
        }
        #[cfg(not(unix))]
        let _ = meta;
        let key_pem = fs::read_to_string(&key_path).map_err(io_err(&key_path))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| CaError::BadKey {
            path: key_path.clone(),
            detail: e.to_string(),
        })?;
        let cert_path = dir.join(CERT_FILE);
        let cert_pem = fs::read_to_string(&cert_path).map_err(io_err(&cert_path))?;
        let summary = summarize(&cert_path, &cert_pem)?;
        let refuse = |detail: &str| CaError::BadCertificate {
            path: cert_path.clone(),
            detail: detail.into(),
        };
        if !summary.is_ca {
            return Err(refuse("not a CA certificate"));
        }
        if !summary.critical || !summary.excludes_all_ips {
            return Err(refuse(
                "its name constraints are not critical or do not exclude IP addresses (make it with `tollgate ca init`)",
            ));
        }
        if !summary.valid_now {
            return Err(refuse("expired or not yet valid"));
        }
        if key.subject_public_key_info() != summary.spki {
            return Err(refuse("ca.key is not this certificate's key"));
        }
        for host in hosts {
            if !permitted_by(&summary.permitted, host) {
                return Err(CaError::NotCovered {
                    host: host.clone(),
                    permitted: if summary.permitted.is_empty() {
                        "none".into()
                    } else {
                        summary.permitted.join(", ")
                    },
                });
            }
        }
        let ca_der = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
            .map(|(_, p)| CertificateDer::from(p.contents))
            .map_err(|e| CaError::BadCertificate {
                path: cert_path.clone(),
                detail: e.to_string(),
            })?;
        let issuer =
            Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|e| CaError::BadCertificate {
                path: cert_path.clone(),
                detail: e.to_string(),
            })?;
        Ok(Minter {
            issuer,
            ca_der,
            constraints: summary.permitted,
            hosts: hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
            leaves: Mutex::new(HashMap::new()),
        })
    }

    /// Whether this sidecar intercepts `host`.
    pub fn intercepts(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        self.hosts.contains(&host)
    }

    /// The leaf for `host` (cached; minted or renewed when needed).
    pub fn leaf(&self, host: &str) -> Result<Arc<CertifiedKey>, CaError> {
        self.leaf_at(host, SystemTime::now())
    }

    /// [`Minter::leaf`] as of `now`.
    fn leaf_at(&self, host: &str, now: SystemTime) -> Result<Arc<CertifiedKey>, CaError> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if !self.intercepts(&host) || !permitted_by(&self.constraints, &host) {
            tracing::warn!(host = %host, "refused to mint a certificate outside the intercepted hosts");
            return Err(CaError::Refused(host));
        }
        if let Ok(leaves) = self.leaves.lock() {
            if let Some((leaf, expires)) = leaves.get(&host) {
                if expires
                    .duration_since(now)
                    .is_ok_and(|left| left > LEAF_RENEW_BEFORE)
                {
                    return Ok(leaf.clone());
                }
            }
        }
        let (leaf, expires) = self.mint(&host, now)?;
        if let Ok(mut leaves) = self.leaves.lock() {
            leaves.insert(host, (leaf.clone(), expires));
        }
        Ok(leaf)
    }

    fn mint(
        &self,
        host: &str,
        now: SystemTime,
    ) -> Result<(Arc<CertifiedKey>, SystemTime), CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(vec![host.to_string()])?;
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, host);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let expires = now + LEAF_VALIDITY;
        params.not_before = (now - BACKDATE).into();
        params.not_after = expires.into();
        let cert = params.signed_by(&key, &self.issuer)?;
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signing = rustls::crypto::ring::sign::any_supported_type(&der)
            .map_err(|e| CaError::Tls(e.to_string()))?;
        let chain = vec![cert.der().clone(), self.ca_der.clone()];
        tracing::info!(host, "minted a leaf certificate");
        Ok((Arc::new(CertifiedKey::new(chain, signing)), expires))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts() -> Vec<String> {
        vec!["api.anthropic.com".into(), "api.openai.com".into()]
    }

    #[test]
    fn init_makes_a_constrained_ca_with_a_private_key() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), &hosts()).unwrap();
        let s = show(dir.path()).unwrap();
        assert!(s.is_ca);
        assert!(s.critical);
        assert!(s.excludes_all_ips);
        assert!(s.valid_now);
        assert_eq!(s.permitted, hosts());
        assert!(s
            .render()
            .contains("permitted DNS: api.anthropic.com, api.openai.com"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Never overwritten.
        assert!(matches!(
            init(dir.path(), &hosts()),
            Err(CaError::Exists(_))
        ));
    }

    #[test]
    fn load_refuses_loose_keys_and_uncovered_hosts() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), &hosts()).unwrap();
        assert!(Minter::load(dir.path(), &hosts()).is_ok());
        let more = vec!["api.anthropic.com".into(), "openrouter.ai".into()];
        let e = Minter::load(dir.path(), &more).unwrap_err();
        assert!(e.to_string().contains("openrouter.ai"), "{e}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(dir.path().join(KEY_FILE), fs::Permissions::from_mode(0o644))
                .unwrap();
            assert!(matches!(
                Minter::load(dir.path(), &hosts()),
                Err(CaError::KeyPermissions { .. })
            ));
        }
    }

    #[test]
    fn a_key_of_another_ca_or_an_ip_host_is_refused() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        init(a.path(), &hosts()).unwrap();
        init(b.path(), &hosts()).unwrap();
        fs::remove_file(a.path().join(KEY_FILE)).unwrap();
        fs::copy(b.path().join(KEY_FILE), a.path().join(KEY_FILE)).unwrap();
        let e = Minter::load(a.path(), &hosts()).unwrap_err();
        assert!(e.to_string().contains("not this certificate's key"), "{e}");
        let c = tempfile::tempdir().unwrap();
        assert!(matches!(
            init(c.path(), &["10.0.0.7".to_string()]),
            Err(CaError::IpHost(_))
        ));
    }

    #[test]
    fn leaves_only_for_intercepted_hosts_and_cached() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), &hosts()).unwrap();
        let m = Minter::load(dir.path(), &["api.anthropic.com".to_string()]).unwrap();
        let a = m.leaf("api.anthropic.com").unwrap();
        let b = m.leaf("API.anthropic.com.").unwrap();
        assert!(Arc::ptr_eq(&a, &b), "cached");
        assert_eq!(a.cert.len(), 2, "leaf and CA");
        // Within the constraints but not intercepted; outside both.
        assert!(matches!(m.leaf("api.openai.com"), Err(CaError::Refused(_))));
        assert!(matches!(m.leaf("example.com"), Err(CaError::Refused(_))));
    }

    #[test]
    fn leaves_are_renewed_before_they_expire() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), &hosts()).unwrap();
        let m = Minter::load(dir.path(), &hosts()).unwrap();
        let t0 = SystemTime::now();
        let first = m.leaf_at("api.openai.com", t0).unwrap();
        let later = t0 + Duration::from_secs(3600);
        assert!(Arc::ptr_eq(
            &first,
            &m.leaf_at("api.openai.com", later).unwrap()
        ));
        // Less than 6 h of its 24 h left: a new leaf.
        let near_end = t0 + LEAF_VALIDITY - LEAF_RENEW_BEFORE + Duration::from_secs(60);
        let renewed = m.leaf_at("api.openai.com", near_end).unwrap();
        assert!(!Arc::ptr_eq(&first, &renewed));
        assert!(Arc::ptr_eq(
            &renewed,
            &m.leaf_at("api.openai.com", near_end).unwrap()
        ));
    }

    #[test]
    fn subtree_matching() {
        let c = vec!["anthropic.com".to_string()];
        assert!(permitted_by(&c, "anthropic.com"));
        assert!(permitted_by(&c, "api.anthropic.com"));
        assert!(!permitted_by(&c, "evilanthropic.com"));
        assert!(!permitted_by(&c, "anthropic.com.evil.net"));
    }
}
