//! The JSONPatch that injects the sidecar into a Pod: built from
//! k8s-openapi's types and json-patch's operations, only `add`s, so that it
//! applies to the object the API server sent whatever fields it has that
//! these types do not know.

use std::collections::BTreeMap;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HTTPGetAction, KeyToPath, ObjectFieldSelector, Pod, Probe, ResourceRequirements,
    SeccompProfile, SecretKeySelector, SecretVolumeSource, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;

use super::annotations::{self, BadAnnotation, PodSettings};
use crate::config::inject::{AppMode, SidecarMode};

/// The sidecar container's name; a pod with a container of this name is
/// taken as injected already.
pub const SIDECAR: &str = "tollgate";
const DATA_VOLUME: &str = "tollgate-data";
const TMP_VOLUME: &str = "tollgate-tmp";
const CA_VOLUME: &str = "tollgate-ca";
const BUNDLE_VOLUME: &str = "tollgate-ca-bundle";
const DATA_DIR: &str = "/var/lib/tollgate";
const CA_DIR: &str = "/etc/tollgate/ca";
const BUNDLE_DIR: &str = "/etc/tollgate/ca-bundle";
/// The sidecar's user in base-URL mode (the image's `nonroot`).
const SIDECAR_UID: i64 = 65532;
/// Name of the pod IP variable `NO_PROXY` refers to (`$(…)` expansion).
const POD_IP_ENV: &str = "TOLLGATE_POD_IP";
/// Suffixes that stay off the proxy in https-proxy mode: loopback and the
/// cluster's own names (the pod's address is added through `POD_IP_ENV`).
const NO_PROXY: &str = "localhost,127.0.0.1,::1,.svc,.cluster.local";

/// Whether `pod` carries the sidecar already (a container or init
/// container named [`SIDECAR`]).
pub fn has_sidecar(pod: &Pod) -> bool {
    let Some(spec) = &pod.spec else {
        return false;
    };
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .any(|c| c.name == SIDECAR)
}

/// The patch for `pod` in `namespace`, or the annotation whose port an app
/// container already uses.
pub fn build(pod: &Pod, settings: &PodSettings) -> Result<Patch, BadAnnotation> {
    let s = &settings.spec;
    let spec = pod.spec.clone().unwrap_or_default();
    check_ports(&spec.containers, spec.init_containers.as_deref(), settings)?;
    let mut ops = Vec::new();
    let sidecar = to_value(&sidecar(pod, settings));
    match (s.sidecar_mode, &spec.init_containers) {
        (SidecarMode::Native, Some(inits)) if !inits.is_empty() => {
            // First, so that it is ready before any other init container.
            ops.push(add(&["spec", "initContainers", "0"], sidecar));
        }
        (SidecarMode::Native, _) => {
            ops.push(add(
                &["spec", "initContainers"],
                Value::Array(vec![sidecar]),
            ));
        }
        (SidecarMode::Classic, _) => ops.push(add(&["spec", "containers", "-"], sidecar)),
    }
    let app_env = app_env(settings);
    let bundle_mount = (s.mode == AppMode::HttpsProxy).then(|| VolumeMount {
        name: BUNDLE_VOLUME.into(),
        mount_path: BUNDLE_DIR.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    });
    for (i, c) in spec.containers.iter().enumerate() {
        app_container(
            &mut ops,
            "containers",
            i,
            c,
            &app_env,
            bundle_mount.as_ref(),
        );
    }
    if s.sidecar_mode == SidecarMode::Native {
        // Init containers run after the sidecar started (it is placed
        // first), so they can use it as well; the indices moved by one.
        let shift = usize::from(spec.init_containers.as_ref().is_some_and(|v| !v.is_empty()));
        for (i, c) in spec.init_containers.iter().flatten().enumerate() {
            app_container(
                &mut ops,
                "initContainers",
                i + shift,
                c,
                &app_env,
                bundle_mount.as_ref(),
            );
        }
    }
    let volumes: Vec<Value> = volumes(settings).iter().map(to_value).collect();
    match &spec.volumes {
        Some(v) if !v.is_empty() => {
            for volume in volumes {
                ops.push(add(&["spec", "volumes", "-"], volume));
            }
        }
        _ => ops.push(add(&["spec", "volumes"], Value::Array(volumes))),
    }
    let mode = Value::String(s.sidecar_mode.as_str().into());
    match &pod.metadata.annotations {
        Some(_) => ops.push(add(
            &["metadata", "annotations", annotations::INJECTED],
            mode,
        )),
        None => {
            let map = BTreeMap::from([(annotations::INJECTED.to_string(), mode)]);
            ops.push(add(&["metadata", "annotations"], to_value(&map)));
        }
    }
    Ok(Patch(ops))
}

/// A sidecar port that an app container declares is a conflict on the
/// pod's shared network namespace.
fn check_ports(
    containers: &[Container],
    inits: Option<&[Container]>,
    settings: &PodSettings,
) -> Result<(), BadAnnotation> {
    let s = &settings.spec;
    let mut ours = vec![
        (annotations::PORT, s.port),
        (annotations::ADMIN_PORT, s.admin_port),
    ];
    if s.mode == AppMode::HttpsProxy {
        ours.push((annotations::PROXY_PORT, s.proxy_port));
    }
    for c in containers.iter().chain(inits.into_iter().flatten()) {
        for p in c.ports.iter().flatten() {
            if let Some((annotation, port)) =
                ours.iter().find(|(_, q)| i32::from(*q) == p.container_port)
            {
                return Err(BadAnnotation {
                    annotation: (*annotation).to_string(),
                    value: port.to_string(),
                    problem: format!(
                        "port {port} is used by container {:?}; set {annotation} to a free port",
                        c.name
                    ),
                });
            }
        }
    }
    Ok(())
}

fn app_container(
    ops: &mut Vec<PatchOperation>,
    list: &str,
    index: usize,
    c: &Container,
    env: &[EnvVar],
    bundle: Option<&VolumeMount>,
) {
    let i = index.to_string();
    // Env the app sets itself wins: only missing names are added.
    let missing: Vec<&EnvVar> = env
        .iter()
        .filter(|e| !c.env.iter().flatten().any(|have| have.name == e.name))
        .collect();
    match &c.env {
        Some(have) if !have.is_empty() => {
            for e in missing {
                ops.push(add(&["spec", list, &i, "env", "-"], to_value(e)));
            }
        }
        _ if !missing.is_empty() => {
            ops.push(add(&["spec", list, &i, "env"], to_value(&missing)));
        }
        _ => {}
    }
    let Some(bundle) = bundle else {
        return;
    };
    let mounts = c.volume_mounts.iter().flatten();
    if mounts.clone().any(|m| m.mount_path == bundle.mount_path) {
        return;
    }
    match &c.volume_mounts {
        Some(m) if !m.is_empty() => ops.push(add(
            &["spec", list, &i, "volumeMounts", "-"],
            to_value(bundle),
        )),
        _ => ops.push(add(
            &["spec", list, &i, "volumeMounts"],
            to_value(&[bundle]),
        )),
    }
}

/// What every app container gets: the way to the sidecar.
fn app_env(settings: &PodSettings) -> Vec<EnvVar> {
    let s = &settings.spec;
    match s.mode {
        AppMode::BaseUrl => vec![
            literal("ANTHROPIC_BASE_URL", format!("http://127.0.0.1:{}", s.port)),
            literal("OPENAI_BASE_URL", format!("http://127.0.0.1:{}/v1", s.port)),
        ],
        AppMode::HttpsProxy => {
            let bundle = format!("{BUNDLE_DIR}/ca.pem");
            vec![
                field(POD_IP_ENV, "status.podIP"),
                literal("HTTPS_PROXY", format!("http://127.0.0.1:{}", s.proxy_port)),
                literal("NO_PROXY", format!("{NO_PROXY},$({POD_IP_ENV})")),
                literal("NODE_USE_ENV_PROXY", "1".into()),
                literal("SSL_CERT_FILE", bundle.clone()),
                literal("REQUESTS_CA_BUNDLE", bundle.clone()),
                literal("NODE_EXTRA_CA_CERTS", bundle),
            ]
        }
    }
}

/// The sidecar's own environment: its listeners, its data dir, and the
/// pod's identity as the defaults of requests that do not name one.
fn sidecar_env(pod: &Pod, settings: &PodSettings) -> Vec<EnvVar> {
    let s = &settings.spec;
    let mut env = vec![
        literal("TOLLGATE_LISTEN", format!("127.0.0.1:{}", s.port)),
        // Probes and Prometheus reach it on the pod's address.
        literal("TOLLGATE_ADMIN_LISTEN", format!("0.0.0.0:{}", s.admin_port)),
        literal("TOLLGATE_DATA_DIR", DATA_DIR.into()),
        field("TOLLGATE_SIDECAR_ID", "metadata.name"),
        match &settings.account {
            Some(a) => literal("TOLLGATE_DEFAULT_ACCOUNT", a.clone()),
            None => field("TOLLGATE_DEFAULT_ACCOUNT", "metadata.namespace"),
        },
        match &settings.workload {
            Some(w) => literal("TOLLGATE_DEFAULT_WORKLOAD", w.clone()),
            None => field("TOLLGATE_DEFAULT_WORKLOAD", "spec.serviceAccountName"),
        },
    ];
    let tags = tags(pod, &s.tag_labels);
    if !tags.is_empty() {
        env.push(literal("TOLLGATE_DEFAULT_TAGS", tags));
    }
    if s.mode == AppMode::HttpsProxy {
        env.push(literal(
            "TOLLGATE_FORWARD_PROXY_LISTEN",
            format!("127.0.0.1:{}", s.proxy_port),
        ));
        env.push(literal("TOLLGATE_CA_DIR", CA_DIR.into()));
    }
    if !s.control_url.is_empty() {
        env.push(literal("TOLLGATE_CONTROL_URL", s.control_url.clone()));
    }
    if !s.credential_secret.is_empty() {
        env.push(EnvVar {
            name: "TOLLGATE_CONTROL_CREDENTIAL".into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: s.credential_secret.clone(),
                    key: "credential".into(),
                    optional: Some(false),
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        });
    }
    env
}

/// `label=value` for each configured label the pod has (values that are
/// not valid tag values are left out rather than failing the sidecar).
fn tags(pod: &Pod, labels: &[String]) -> String {
    let have = pod.metadata.labels.clone().unwrap_or_default();
    labels
        .iter()
        .filter_map(|l| {
            let v = have.get(l)?;
            let ok = crate::identity::check_name("tag", l).is_ok()
                && crate::identity::check_name("tag", v).is_ok();
            ok.then(|| format!("{l}={v}"))
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn sidecar(pod: &Pod, settings: &PodSettings) -> Container {
    let s = &settings.spec;
    let https_proxy = s.mode == AppMode::HttpsProxy;
    let quantities = |pairs: [(&str, &String); 2]| {
        let m: BTreeMap<String, Quantity> = pairs
            .into_iter()
            .filter(|(_, q)| !q.is_empty())
            .map(|(k, q)| (k.to_string(), Quantity(q.clone())))
            .collect();
        (!m.is_empty()).then_some(m)
    };
    let probe = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(i32::from(s.admin_port)),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(1),
        ..Probe::default()
    };
    let mut mounts = vec![
        mount(DATA_VOLUME, DATA_DIR, false),
        mount(TMP_VOLUME, "/tmp", false),
    ];
    if https_proxy {
        mounts.push(mount(CA_VOLUME, CA_DIR, true));
    }
    Container {
        name: SIDECAR.into(),
        image: Some(s.image.clone()),
        image_pull_policy: Some(s.image_pull_policy.clone()),
        args: Some(vec!["proxy".into()]),
        env: Some(sidecar_env(pod, settings)),
        ports: Some(vec![ContainerPort {
            name: Some("tollgate-admin".into()),
            container_port: i32::from(s.admin_port),
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        resources: Some(ResourceRequirements {
            requests: quantities([("cpu", &s.cpu_request), ("memory", &s.memory_request)]),
            limits: quantities([("cpu", &s.cpu_limit), ("memory", &s.memory_limit)]),
            ..ResourceRequirements::default()
        }),
        // Ready before the app starts (native mode holds the app back
        // until this passes).
        startup_probe: Some(probe("/readyz", 1, 60)),
        liveness_probe: Some(probe("/healthz", 10, 3)),
        restart_policy: (s.sidecar_mode == SidecarMode::Native).then(|| "Always".into()),
        security_context: Some(SecurityContext {
            // The CA key is mounted 0400 and owned by root (a Secret
            // volume), and the sidecar refuses a key others can read: so in
            // https-proxy mode it runs as root, with nothing else granted.
            run_as_non_root: Some(!https_proxy),
            run_as_user: Some(if https_proxy { 0 } else { SIDECAR_UID }),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..SeccompProfile::default()
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(mounts),
        ..Container::default()
    }
}

fn volumes(settings: &PodSettings) -> Vec<Volume> {
    let s = &settings.spec;
    let empty = |name: &str| Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    };
    let mut v = vec![empty(DATA_VOLUME), empty(TMP_VOLUME)];
    if s.mode == AppMode::HttpsProxy {
        let secret = |name: &str, items: Vec<KeyToPath>| Volume {
            name: name.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(s.ca_secret.clone()),
                items: Some(items),
                default_mode: Some(0o400),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        };
        let item = |key: &str, mode: i32| KeyToPath {
            key: key.into(),
            path: key.into(),
            mode: Some(mode),
        };
        // The sidecar's copy has the key; the apps' copy never does.
        v.push(secret(
            CA_VOLUME,
            vec![item("ca.pem", 0o444), item("ca.key", 0o400)],
        ));
        v.push(secret(BUNDLE_VOLUME, vec![item("ca.pem", 0o444)]));
    }
    v
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    }
}

fn literal(name: &str, value: String) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value),
        ..EnvVar::default()
    }
}

/// A variable from the downward API.
fn field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn add(path: &[&str], value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path: PointerBuf::from_tokens(path.iter().copied()),
        value,
    })
}

/// k8s-openapi's types always serialize; `Null` would only come from a
/// serializer bug, and the API server would then reject the patch.
fn to_value<T: serde::Serialize + ?Sized>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}
