//! Kubernetes service-link variables in a pod's environment: a Service
//! named `tollgate`, `tollgate-control` or `tollgate-inject` in the pod's
//! namespace puts `TOLLGATE_PORT=tcp://…`, `TOLLGATE_CONTROL_SERVICE_HOST=…`
//! and the like into every container. The sidecar and the control endpoint
//! start with them, while a misspelt real key is still reported.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::Command;

use support::control::{Control, ADMIN_TOKEN};
use support::tollgate::Builder;

/// What the kubelet sets for Services `tollgate` (ports `http` 8787 and
/// `metrics` 9464), `tollgate-control` (`http` 8790) and `tollgate-inject`
/// (`https` 443), as `kubectl exec … env` shows them.
fn service_links() -> Vec<(String, String)> {
    let mut env = Vec::new();
    for (name, ip, ports) in [
        (
            "TOLLGATE",
            "10.96.0.10",
            &[("HTTP", 8787), ("METRICS", 9464)][..],
        ),
        ("TOLLGATE_CONTROL", "10.96.0.11", &[("HTTP", 8790)][..]),
        ("TOLLGATE_INJECT", "10.96.0.12", &[("HTTPS", 443)][..]),
    ] {
        let mut set = |k: String, v: String| env.push((k, v));
        set(format!("{name}_SERVICE_HOST"), ip.into());
        set(format!("{name}_SERVICE_PORT"), ports[0].1.to_string());
        set(format!("{name}_PORT"), format!("tcp://{ip}:{}", ports[0].1));
        for (port_name, port) in ports {
            set(format!("{name}_SERVICE_PORT_{port_name}"), port.to_string());
            let link = format!("{name}_PORT_{port}_TCP");
            set(link.clone(), format!("tcp://{ip}:{port}"));
            set(format!("{link}_PROTO"), "tcp".into());
            set(format!("{link}_PORT"), port.to_string());
            set(format!("{link}_ADDR"), ip.into());
        }
    }
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecar_starts_with_service_links_in_its_environment() {
    let links = service_links();
    assert_eq!(links.len(), 3 * 3 + 4 * 5);
    let mut builder = Builder::new("http://127.0.0.1:9");
    for (k, v) in &links {
        builder = builder.env(k, v);
    }
    let t = builder.start();
    let ready = reqwest::get(format!("{}/readyz", t.admin_url()))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200, "{}", t.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_endpoint_starts_with_service_links_in_its_environment() {
    let links = service_links();
    let env: Vec<(&str, &str)> = links.iter().map(|(k, v)| (&**k, &**v)).collect();
    let c = Control::start_env("", None, "http", &env);
    let health = reqwest::get(format!("{}/healthz", c.url())).await.unwrap();
    assert_eq!(health.status(), 200, "{}", c.log());
}

/// The links are skipped, a misspelt key of either program is not.
#[test]
fn a_misspelt_key_is_still_reported_next_to_service_links() {
    for (program, typo, key) in [
        ("proxy", "TOLLGATE_LISTN", "listn (from env TOLLGATE_LISTN)"),
        (
            "control",
            "TOLLGATE_CONTROL_LISTN",
            "listn (from env TOLLGATE_CONTROL_LISTN)",
        ),
        // A name of the link's shape with a value the kubelet never writes.
        ("proxy", "TOLLGATE_PORT", "port (from env TOLLGATE_PORT)"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args([program, "--check-config"])
            .envs(service_links().into_iter().filter(|(k, _)| k != typo))
            .env(typo, "127.0.0.1:8787")
            .env("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{program}: {err}");
        assert!(
            err.contains(&format!("{key}: unknown key")),
            "{program}: {err}"
        );
        // The one problem is the typo: no service link is named.
        assert_eq!(err.matches("unknown key").count(), 1, "{program}: {err}");
    }
}

/// No key of any program has an environment name of a service link's shape
/// (`…_PORT`, `…_SERVICE_HOST`, `…_SERVICE_PORT…`, `…_PORT_<n>_<PROTO>…`):
/// such a key would take the link's value instead of being left alone.
#[test]
fn no_key_is_named_like_a_service_link() {
    let programs: [(&str, Vec<&tollgate::config::Key>); 3] = [
        ("TOLLGATE_", tollgate::config::keys().collect()),
        (
            "TOLLGATE_CONTROL_",
            tollgate::config::control::keys().collect(),
        ),
        (
            "TOLLGATE_INJECT_",
            tollgate::config::inject::keys().collect(),
        ),
    ];
    for (prefix, keys) in programs {
        assert!(!keys.is_empty());
        for key in keys {
            let name = format!(
                "{prefix}{}",
                key.key
                    .replace("[]", "")
                    .replace('.', "__")
                    .replace("<name>", "x")
                    .replace("<model>", "x")
                    .to_ascii_uppercase()
            );
            let segments: Vec<&str> = name.split('_').collect();
            let docker_link = segments.windows(3).any(|w| {
                w[0] == "PORT"
                    && w[1].bytes().all(|b| b.is_ascii_digit())
                    && ["TCP", "UDP", "SCTP"].contains(&w[2])
            });
            assert!(
                !(name.ends_with("_PORT")
                    || name.ends_with("_SERVICE_HOST")
                    || name.contains("_SERVICE_PORT")
                    || docker_link),
                "{name} has the shape of a Kubernetes service link"
            );
        }
    }
}
