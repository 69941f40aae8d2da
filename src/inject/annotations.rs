//! The `tollgate.dev/*` annotations a pod (or its namespace) carries: the
//! wish to be injected, and per-pod overrides of the injector's config.
//! Every value is checked here; a bad one denies the pod with a message that
//! names the annotation and the fix, rather than producing a broken pod.

use std::collections::BTreeMap;

use crate::config::inject::{AppMode, SidecarMode, SidecarSpec};
use crate::kube_values::{is_image, is_quantity};

/// Prefix of every annotation the injector reads or writes.
pub const PREFIX: &str = "tollgate.dev/";
/// `"true"` asks for the sidecar; `"false"` opts a pod out of a namespace's
/// `"true"`.
pub const INJECT: &str = "tollgate.dev/inject";
/// Written by the injector on the pods it patched: the sidecar mode used.
pub const INJECTED: &str = "tollgate.dev/injected";
pub const MODE: &str = "tollgate.dev/mode";
pub const SIDECAR_MODE: &str = "tollgate.dev/sidecar-mode";
pub const IMAGE: &str = "tollgate.dev/image";
pub const PORT: &str = "tollgate.dev/port";
pub const PROXY_PORT: &str = "tollgate.dev/proxy-port";
pub const ADMIN_PORT: &str = "tollgate.dev/admin-port";
pub const CPU_REQUEST: &str = "tollgate.dev/cpu-request";
pub const MEMORY_REQUEST: &str = "tollgate.dev/memory-request";
pub const CPU_LIMIT: &str = "tollgate.dev/cpu-limit";
pub const MEMORY_LIMIT: &str = "tollgate.dev/memory-limit";
/// The sidecar's default account (else the namespace).
pub const ACCOUNT: &str = "tollgate.dev/account";
/// The sidecar's default workload (else the service account).
pub const WORKLOAD: &str = "tollgate.dev/workload";

/// Every annotation a user may set, for the "unknown annotation" message.
const KNOWN: &[&str] = &[
    INJECT,
    INJECTED,
    MODE,
    SIDECAR_MODE,
    IMAGE,
    PORT,
    PROXY_PORT,
    ADMIN_PORT,
    CPU_REQUEST,
    MEMORY_REQUEST,
    CPU_LIMIT,
    MEMORY_LIMIT,
    ACCOUNT,
    WORKLOAD,
];

/// What a `tollgate.dev/inject` annotation asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wish {
    /// `"true"`.
    Inject,
    /// `"false"`.
    OptOut,
    /// No annotation.
    Unset,
}

/// A `tollgate.dev/*` annotation with a value the injector cannot use.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("annotation {annotation}={value:?}: {problem}")]
pub struct BadAnnotation {
    pub annotation: String,
    pub value: String,
    /// What is wrong and how to fix it.
    pub problem: String,
}

impl BadAnnotation {
    fn new(annotation: &str, value: &str, problem: impl Into<String>) -> BadAnnotation {
        BadAnnotation {
            annotation: annotation.to_string(),
            value: value.to_string(),
            problem: problem.into(),
        }
    }
}

/// The `tollgate.dev/inject` wish in `annotations`.
pub fn wish(annotations: &BTreeMap<String, String>) -> Result<Wish, BadAnnotation> {
    match annotations.get(INJECT).map(String::as_str) {
        None => Ok(Wish::Unset),
        Some("true") => Ok(Wish::Inject),
        Some("false") => Ok(Wish::OptOut),
        Some(other) => Err(BadAnnotation::new(
            INJECT,
            other,
            "must be \"true\" or \"false\" (quoted in YAML)",
        )),
    }
}

/// What one pod gets: the injector's spec with the pod's overrides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodSettings {
    pub spec: SidecarSpec,
    /// `tollgate.dev/account`, else the namespace.
    pub account: Option<String>,
    /// `tollgate.dev/workload`, else the service account.
    pub workload: Option<String>,
}

/// Applies the pod's annotations to `spec`; every bad one is reported.
pub fn settings(
    spec: &SidecarSpec,
    annotations: &BTreeMap<String, String>,
) -> Result<PodSettings, Vec<BadAnnotation>> {
    let mut bad = Vec::new();
    let mut out = PodSettings {
        spec: spec.clone(),
        account: None,
        workload: None,
    };
    for (name, value) in annotations {
        if !name.starts_with(PREFIX) {
            continue;
        }
        let s = &mut out.spec;
        let result = match name.as_str() {
            INJECT => wish(annotations).map(|_| ()),
            // Ours: checked when deciding whether the pod is injected already.
            INJECTED => Ok(()),
            MODE => AppMode::parse(value).map(|m| s.mode = m).ok_or_else(|| {
                BadAnnotation::new(name, value, "must be base-url or https-proxy")
            }),
            SIDECAR_MODE => SidecarMode::parse(value)
                .map(|m| s.sidecar_mode = m)
                .ok_or_else(|| {
                    BadAnnotation::new(
                        name,
                        value,
                        "must be native (Kubernetes 1.29+) or classic (older clusters)",
                    )
                }),
            IMAGE if is_image(value) => {
                s.image = value.clone();
                Ok(())
            }
            IMAGE => Err(BadAnnotation::new(
                name,
                value,
                "must be an image reference without spaces, e.g. ghcr.io/tollgate-dev/tollgate:0.1.0",
            )),
            PORT => port(name, value).map(|p| s.port = p),
            PROXY_PORT => port(name, value).map(|p| s.proxy_port = p),
            ADMIN_PORT => port(name, value).map(|p| s.admin_port = p),
            CPU_REQUEST => quantity(name, value).map(|q| s.cpu_request = q),
            MEMORY_REQUEST => quantity(name, value).map(|q| s.memory_request = q),
            CPU_LIMIT => quantity(name, value).map(|q| s.cpu_limit = q),
            MEMORY_LIMIT => quantity(name, value).map(|q| s.memory_limit = q),
            ACCOUNT => identity(name, value).map(|v| out.account = Some(v)),
            WORKLOAD => identity(name, value).map(|v| out.workload = Some(v)),
            _ => Err(BadAnnotation::new(
                name,
                value,
                format!(
                    "not a tollgate annotation; remove it or use one of {}",
                    KNOWN.join(", ")
                ),
            )),
        };
        if let Err(e) = result {
            bad.push(e);
        }
    }
    let s = &out.spec;
    let ports = [
        (PORT, s.port),
        (PROXY_PORT, s.proxy_port),
        (ADMIN_PORT, s.admin_port),
    ];
    for (i, (a, p)) in ports.iter().enumerate() {
        if let Some((b, _)) = ports[..i].iter().find(|(_, q)| q == p) {
            bad.push(BadAnnotation::new(
                a,
                &p.to_string(),
                format!("the same port as {b}; give each of them its own port"),
            ));
        }
    }
    if bad.is_empty() {
        Ok(out)
    } else {
        Err(bad)
    }
}

fn port(name: &str, value: &str) -> Result<u16, BadAnnotation> {
    match value.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(BadAnnotation::new(
            name,
            value,
            "must be a port number from 1 to 65535, e.g. \"8787\"",
        )),
    }
}

fn quantity(name: &str, value: &str) -> Result<String, BadAnnotation> {
    if is_quantity(value) {
        Ok(value.to_string())
    } else {
        Err(BadAnnotation::new(
            name,
            value,
            "must be a Kubernetes quantity, e.g. \"100m\" or \"0.5\" for CPU, \"128Mi\" or \"1Gi\" for memory",
        ))
    }
}

fn identity(name: &str, value: &str) -> Result<String, BadAnnotation> {
    crate::identity::check_name(name, value)
        .map(str::to_string)
        .map_err(|e| BadAnnotation::new(name, value, e.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> SidecarSpec {
        SidecarSpec {
            image: "tollgate:1".into(),
            image_pull_policy: "IfNotPresent".into(),
            sidecar_mode: SidecarMode::Native,
            mode: AppMode::BaseUrl,
            port: 8787,
            proxy_port: 8788,
            admin_port: 9464,
            cpu_request: "50m".into(),
            memory_request: "64Mi".into(),
            cpu_limit: String::new(),
            memory_limit: "256Mi".into(),
            control_url: String::new(),
            credential_secret: String::new(),
            ca_secret: "tollgate-ca".into(),
            tag_labels: vec![],
        }
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn overrides_apply() {
        let s = settings(
            &spec(),
            &map(&[
                (MODE, "https-proxy"),
                (SIDECAR_MODE, "classic"),
                (PORT, "9000"),
                (MEMORY_LIMIT, "1Gi"),
                (ACCOUNT, "acme"),
                ("other.io/x", "whatever"),
            ]),
        )
        .unwrap();
        assert_eq!(s.spec.mode, AppMode::HttpsProxy);
        assert_eq!(s.spec.sidecar_mode, SidecarMode::Classic);
        assert_eq!(s.spec.port, 9000);
        assert_eq!(s.spec.memory_limit, "1Gi");
        assert_eq!(s.account.as_deref(), Some("acme"));
    }

    #[test]
    fn every_bad_value_is_named() {
        let bad = settings(
            &spec(),
            &map(&[
                (INJECT, "yes"),
                (CPU_LIMIT, "lots"),
                (PORT, "0"),
                (ADMIN_PORT, "8788"),
                ("tollgate.dev/cpu-requets", "1"),
            ]),
        )
        .unwrap_err();
        let names: Vec<&str> = bad.iter().map(|b| b.annotation.as_str()).collect();
        assert_eq!(
            names,
            [
                CPU_LIMIT,
                "tollgate.dev/cpu-requets",
                INJECT,
                PORT,
                ADMIN_PORT
            ]
        );
        assert!(bad[0]
            .to_string()
            .contains("tollgate.dev/cpu-limit=\"lots\": must be a Kubernetes quantity"));
        assert!(bad[4]
            .problem
            .contains("same port as tollgate.dev/proxy-port"));
    }
}
