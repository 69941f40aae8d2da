//! Listeners: base-URL mode (`listen`), HTTPS_PROXY mode
//! (`forward_proxy_listen` and its CA, tunnel policy and proxy
//! authentication) and the admin listener.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::schema::{Key, Type};
use super::values::{non_empty, socket_addr};
use super::Problem;

const DEFAULT_LISTEN: &str = "127.0.0.1:8787";
const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9464";
const DEFAULT_CA_DIR: &str = "tollgate-ca";

#[rustfmt::skip]
pub(super) static KEYS: &[Key] = &[
    Key::new("listen", Type::SocketAddr, DEFAULT_LISTEN,
     "Base-URL mode listener: point ANTHROPIC_BASE_URL (and OPENAI_BASE_URL, plus /v1) here. Flag --listen."),
    Key::new("forward_proxy_listen", Type::SocketAddrOrOff, "\"\"",
     "HTTPS_PROXY mode listener, e.g. 127.0.0.1:8788 (apps set HTTPS_PROXY=http://127.0.0.1:8788 and trust the CA in ca_dir); \"\" = off."),
    Key::new("ca_dir", Type::Path, DEFAULT_CA_DIR,
     "Directory of the CA (ca.pem, ca.key from `tollgate ca init`) that HTTPS_PROXY mode mints leaves from."),
    Key::new("tunnel_policy", Type::Str, "allow",
     "CONNECT to a host that is not intercepted: allow (a blind byte-for-byte tunnel) or deny (403)."),
    Key::new("forward_proxy_auth_sha256", Type::Str, "\"\"",
     "Hex SHA-256 of \"user:password\": when set, HTTPS_PROXY mode requires Proxy-Authorization: Basic with them (407 otherwise)."),
    Key::new("admin_listen", Type::SocketAddrOrOff, DEFAULT_ADMIN_LISTEN,
     "Listener for /metrics, /healthz and /readyz; \"\" turns it off. Flag --admin-listen."),
];

/// The section as written.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListeners {
    pub listen: Option<String>,
    pub forward_proxy_listen: Option<String>,
    pub ca_dir: Option<String>,
    pub tunnel_policy: Option<String>,
    pub forward_proxy_auth_sha256: Option<String>,
    pub admin_listen: Option<String>,
}

/// Whether a CONNECT to a host that is not intercepted is tunnelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TunnelPolicy {
    /// A blind byte-for-byte tunnel.
    Allow,
    /// 403.
    Deny,
}

/// HTTPS_PROXY mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForwardProxy {
    pub listen: SocketAddr,
    pub ca_dir: PathBuf,
    pub tunnel_policy: TunnelPolicy,
    /// SHA-256 of `user:password` required in `Proxy-Authorization: Basic`.
    pub auth_sha256: Option<[u8; 32]>,
}

/// The validated section.
pub(super) struct Listeners {
    pub listen: SocketAddr,
    pub forward_proxy: Option<ForwardProxy>,
    pub ca_dir: PathBuf,
    pub admin_listen: Option<SocketAddr>,
}

pub(super) fn validate(raw: RawListeners, problems: &mut Vec<Problem>) -> Option<Listeners> {
    let forward_proxy = forward_proxy(&raw, problems);
    let ca_dir = PathBuf::from(
        raw.ca_dir
            .as_deref()
            .filter(|s| !s.is_empty())
            .unwrap_or(DEFAULT_CA_DIR),
    );
    let listen = socket_addr(
        "listen",
        raw.listen.as_deref().unwrap_or(DEFAULT_LISTEN),
        problems,
    );
    let admin_listen = match raw.admin_listen.as_deref().unwrap_or(DEFAULT_ADMIN_LISTEN) {
        "" => Some(None),
        s => socket_addr("admin_listen", s, problems).map(Some),
    };
    Some(Listeners {
        listen: listen?,
        forward_proxy: forward_proxy?,
        ca_dir,
        admin_listen: admin_listen?,
    })
}

/// HTTPS_PROXY mode keys; `Some(None)` when off.
fn forward_proxy(raw: &RawListeners, problems: &mut Vec<Problem>) -> Option<Option<ForwardProxy>> {
    let before = problems.len();
    let tunnel_policy = match raw.tunnel_policy.as_deref().unwrap_or("allow") {
        "allow" => Some(TunnelPolicy::Allow),
        "deny" => Some(TunnelPolicy::Deny),
        other => {
            problems.push(Problem::new(
                "tunnel_policy",
                format!("{other:?} is not allow or deny"),
            ));
            None
        }
    };
    let auth_sha256 = match raw.forward_proxy_auth_sha256.as_deref().unwrap_or("") {
        "" => Some(None),
        hex => match crate::keys::parse_sha256_hex(hex) {
            Some(h) => Some(Some(h)),
            None => {
                problems.push(Problem::new(
                    "forward_proxy_auth_sha256",
                    "must be 64 hex digits: the SHA-256 of \"user:password\" (never the password)",
                ));
                None
            }
        },
    };
    let ca_dir = non_empty(
        "ca_dir",
        raw.ca_dir.clone().unwrap_or_else(|| DEFAULT_CA_DIR.into()),
        problems,
    );
    let listen = match raw.forward_proxy_listen.as_deref().unwrap_or("") {
        "" => None,
        s => socket_addr("forward_proxy_listen", s, problems),
    };
    if let (Some(addr), Some(None)) = (listen, auth_sha256) {
        if !addr.ip().is_loopback() {
            problems.push(Problem::new(
                "forward_proxy_listen",
                format!("{addr} is not a loopback address: without forward_proxy_auth_sha256 anyone who can reach it could tunnel through this sidecar"),
            ));
        }
    }
    if problems.len() != before {
        return None;
    }
    let Some(listen) = listen else {
        return Some(None);
    };
    Some(Some(ForwardProxy {
        listen,
        ca_dir: PathBuf::from(ca_dir?),
        tunnel_policy: tunnel_policy?,
        auth_sha256: auth_sha256?,
    }))
}

#[cfg(test)]
mod tests {
    use super::super::testing::{ok, problems};
    use super::*;

    #[test]
    fn forward_proxy_keys() {
        let c = ok(
            r#"
forward_proxy_listen = "127.0.0.1:8788"
ca_dir = "/etc/tollgate/ca"
tunnel_policy = "deny"
forward_proxy_auth_sha256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
[providers.anthropic]
hosts = ["API.anthropic.com", "anthropic.internal."]
"#,
            &[],
        );
        let f = c.forward_proxy.clone().unwrap();
        assert_eq!(f.listen.to_string(), "127.0.0.1:8788");
        assert_eq!(f.tunnel_policy, TunnelPolicy::Deny);
        assert!(f.auth_sha256.is_some());
        assert_eq!(
            c.provider("anthropic").unwrap().hosts,
            ["api.anthropic.com", "anthropic.internal"]
        );
        let got = problems(
            "forward_proxy_listen = \"x\"\ntunnel_policy = \"maybe\"\nforward_proxy_auth_sha256 = \"hunter2\"\n[providers.openai]\nhosts = \"api.openai.com\"\n",
            &[],
        );
        assert_eq!(got.len(), 4, "{got:?}");
        assert!(got[0].starts_with("providers.openai.hosts: expected an array of strings"));
        let got = problems(
            "[providers.openrouter]\nhosts = [\"api.openai.com\"]\n",
            &[],
        );
        assert_eq!(
            got,
            ["providers.openrouter.hosts: \"api.openai.com\" is also a host of provider openai"]
        );
        // Off loopback only with proxy authentication.
        let got = problems("forward_proxy_listen = \"0.0.0.0:8788\"\n", &[]);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].contains("not a loopback address"), "{got:?}");
        ok(
            "forward_proxy_listen = \"0.0.0.0:8788\"\nforward_proxy_auth_sha256 = \"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\"\n",
            &[],
        );
    }
}
