//! The Helm chart (`helm/tollgate`), the plain manifests (`deploy/`) and the
//! image (`Dockerfile`), with the real tools `.ci/k8s-tools` installs: Helm 4
//! (`lint --strict`, `template`, the values schema), `kubernetes-validate
//! --strict` on every rendered object, `promtool check config`; and the
//! rendered config of the injector and the control endpoint through the
//! real binary's `--check-config`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use support::tools;

/// Versions every rendered object is validated at: the chart's default
/// (native sidecars) needs 1.29; the newest kubernetes-validate knows.
const VERSIONS: &[&str] = &["1.29.0", "1.37.0"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn chart() -> PathBuf {
    root().join("helm/tollgate")
}

fn helm(args: &[&str]) -> Output {
    Command::new(tools::helm())
        .args(args)
        .env(
            "HELM_CACHE_HOME",
            std::env::temp_dir().join("tollgate-helm-cache"),
        )
        .env(
            "HELM_CONFIG_HOME",
            std::env::temp_dir().join("tollgate-helm-config"),
        )
        .env(
            "HELM_DATA_HOME",
            std::env::temp_dir().join("tollgate-helm-data"),
        )
        .output()
        .expect("run helm")
}

fn text(out: &Output) -> String {
    tools::said(out)
}

/// `helm template tollgate helm/tollgate --namespace tollgate --set …`.
fn render(sets: &[&str]) -> Result<String, String> {
    render_with(&[], sets)
}

/// [`render`] with extra arguments (`-f values.yaml`).
fn render_with(extra: &[&str], sets: &[&str]) -> Result<String, String> {
    let chart = chart();
    let mut args = vec![
        "template",
        "tollgate",
        chart.to_str().unwrap(),
        "--namespace",
        "tollgate",
    ];
    args.extend(extra);
    for s in sets {
        args.extend(["--set", s]);
    }
    let out = helm(&args);
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap())
    } else {
        Err(text(&out))
    }
}

fn parse(yaml: &str) -> Vec<Value> {
    tools::parse_yaml(yaml)
}

/// Custom resources kubernetes-validate has no schema for.
fn is_custom(doc: &Value) -> bool {
    let api = doc["apiVersion"].as_str().unwrap_or("");
    api.starts_with("cert-manager.io/") || api.starts_with("monitoring.coreos.com/")
}

/// Every object validated strictly at each of `VERSIONS` (custom resources:
/// their group and kind checked only); returns the objects.
fn validate_all(what: &str, yaml: &str) -> Vec<Value> {
    let docs = parse(yaml);
    assert!(!docs.is_empty(), "{what}: nothing rendered");
    let core: Vec<String> = docs
        .iter()
        .filter(|d| !is_custom(d))
        .map(Value::to_string)
        .collect();
    for d in docs.iter().filter(|d| is_custom(d)) {
        let kind = d["kind"].as_str().unwrap();
        assert!(
            ["Certificate", "Issuer", "ServiceMonitor", "PodMonitor"].contains(&kind),
            "{what}: {d}"
        );
    }
    for v in VERSIONS {
        if let Err(e) = tools::validate(v, &core.join("\n---\n")) {
            panic!("{what}: not valid at {v}:\n{e}");
        }
    }
    docs
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// Each documented option, as `--set` lists.
const OPTIONS: &[&[&str]] = &[
    &[],
    &["injector.certManager.enabled=true"],
    &[
        "injector.certManager.enabled=true",
        "injector.certManager.issuerName=corp-ca",
        "injector.certManager.issuerKind=ClusterIssuer",
    ],
    &["networkPolicy.enabled=true"],
    &["serviceMonitor.enabled=true", "podMonitor.enabled=true"],
    &["control.enabled=false"],
    &["injector.enabled=false"],
    &["control.existingSecret=my-secrets"],
    &[
        "injector.sidecar.mode=classic",
        "injector.sidecar.appMode=https-proxy",
        "injector.failurePolicy=Ignore",
    ],
    &[
        "injector.sidecar.controlUrl=https://control.example:8790",
        "injector.sidecar.credentialSecret=tollgate-sidecar",
    ],
    &["imagePullSecrets[0].name=regcred", "image.tag=dev"],
    &["injector.namespaceSelector.matchLabels.team=ml"],
    &[
        "control.storage.storageClassName=fast",
        "control.env.TOLLGATE_CONTROL_LEASE_TTL=30s",
    ],
];

#[test]
fn lint_strict_and_every_option_renders_valid_objects() {
    for sets in OPTIONS {
        let chart = chart();
        let mut args = vec![
            "lint",
            "--strict",
            "--kube-version",
            "1.33.0",
            chart.to_str().unwrap(),
        ];
        for s in *sets {
            args.extend(["--set", s]);
        }
        let out = helm(&args);
        assert!(out.status.success(), "lint {sets:?}:\n{}", text(&out));
        let yaml = render(sets).unwrap_or_else(|e| panic!("{sets:?}: {e}"));
        validate_all(&format!("{sets:?}"), &yaml);
    }
}

/// The example values of the README's Kubernetes way in.
#[test]
fn the_example_values_render_valid_objects() {
    let values = root().join("examples/kubernetes/values.yaml");
    let values = values.to_str().unwrap();
    let chart = chart();
    let out = helm(&[
        "lint",
        "--strict",
        "--kube-version",
        "1.33.0",
        chart.to_str().unwrap(),
        "-f",
        values,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let docs = validate_all(
        "examples/kubernetes/values.yaml",
        &render_with(&["-f", values], &[]).unwrap(),
    );
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    for want in ["ServiceMonitor", "PodMonitor", "NetworkPolicy"] {
        assert!(kinds.contains(&want), "{kinds:?}");
    }
}

#[test]
fn defaults_are_secure_and_complete() {
    let docs = validate_all("defaults", &render(&[]).unwrap());
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    for want in [
        "StatefulSet",
        "Deployment",
        "Service",
        "Secret",
        "PodDisruptionBudget",
        "MutatingWebhookConfiguration",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
    ] {
        assert!(kinds.contains(&want), "no {want}: {kinds:?}");
    }
    for workload in docs
        .iter()
        .filter(|d| d["kind"] == "Deployment" || d["kind"] == "StatefulSet")
    {
        let pod = &workload["spec"]["template"]["spec"];
        let name = &workload["metadata"]["name"];
        assert_eq!(pod["enableServiceLinks"], false, "{name}");
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}");
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        for c in pod["containers"].as_array().unwrap() {
            let sc = &c["securityContext"];
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}");
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
            assert_eq!(
                sc["capabilities"]["drop"],
                serde_json::json!(["ALL"]),
                "{name}"
            );
            assert_eq!(sc["runAsNonRoot"], true, "{name}");
        }
    }
    let injector = find(&docs, "Deployment", "tollgate-injector");
    assert_eq!(injector["spec"]["replicas"], 2);
    let control = find(&docs, "StatefulSet", "tollgate-control");
    assert_eq!(control["spec"]["replicas"], 1);
    assert!(
        control["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
            == "1Gi"
    );
    // Service names whose link variables are no program's config prefix.
    for svc in docs.iter().filter(|d| d["kind"] == "Service") {
        let env = svc["metadata"]["name"]
            .as_str()
            .unwrap()
            .to_ascii_uppercase()
            .replace('-', "_");
        assert!(
            !format!("{env}_").starts_with("TOLLGATE_CONTROL_")
                && !format!("{env}_").starts_with("TOLLGATE_INJECT_"),
            "Service {env}"
        );
    }
    // The webhook: its CA is the one that signed the Secret's certificate.
    let webhook = find(&docs, "MutatingWebhookConfiguration", "tollgate-injector");
    let hook = &webhook["webhooks"][0];
    let secret = find(&docs, "Secret", "tollgate-injector-tls");
    assert_eq!(hook["clientConfig"]["caBundle"], secret["data"]["ca.crt"]);
    assert_eq!(hook["clientConfig"]["service"]["name"], "tollgate-webhook");
    assert_eq!(hook["clientConfig"]["service"]["path"], "/mutate");
    assert_eq!(hook["failurePolicy"], "Fail");
    assert_eq!(hook["reinvocationPolicy"], "IfNeeded");
    assert_eq!(hook["sideEffects"], "None");
    let excluded = &hook["namespaceSelector"]["matchExpressions"][0]["values"];
    assert!(excluded
        .as_array()
        .unwrap()
        .contains(&serde_json::json!("tollgate")));
    // NOTES.txt tells the user how to annotate a workload.
    let out = helm(&[
        "install",
        "--dry-run=client",
        "tollgate",
        chart().to_str().unwrap(),
        "--namespace",
        "tollgate",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let notes = text(&out);
    let notes = &notes[notes.find("NOTES:").expect("NOTES")..];
    assert!(notes.contains("tollgate.dev/inject\":\"true"), "{notes}");
    assert!(
        notes.contains("get secret tollgate-control-secrets"),
        "{notes}"
    );
    assert!(notes.contains("tollgate.dev/inject"), "{notes}");
}

/// The chart's rendered config is what the binary accepts.
#[test]
fn the_rendered_config_passes_the_binarys_check() {
    let docs = parse(&render(&[]).unwrap());
    let env_of = |kind: &str, name: &str| -> Vec<(String, String)> {
        let w = find(&docs, kind, name);
        let secret = find(&docs, "Secret", "tollgate-control-secrets");
        w["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let value = match e.get("value") {
                    Some(v) => v.as_str().unwrap().to_string(),
                    None => {
                        use base64::Engine as _;
                        let key = e["valueFrom"]["secretKeyRef"]["key"].as_str().unwrap();
                        let b64 = secret["data"][key].as_str().unwrap();
                        let bytes = base64::engine::general_purpose::STANDARD
                            .decode(b64)
                            .unwrap();
                        String::from_utf8(bytes).unwrap()
                    }
                };
                (e["name"].as_str().unwrap().to_string(), value)
            })
            .collect()
    };
    for (program, kind, name) in [
        ("inject", "Deployment", "tollgate-injector"),
        ("control", "StatefulSet", "tollgate-control"),
    ] {
        let env = env_of(kind, name);
        let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args([program, "--check-config"])
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .unwrap();
        assert!(out.status.success(), "{program}: {}\n{env:?}", text(&out));
    }
}

#[test]
fn invalid_values_are_rejected_by_the_schema() {
    for (set, path) in [
        ("injector.replicas=0", "injector.replicas"),
        ("injector.sidecar.mode=sidecar", "injector.sidecar.mode"),
        ("injector.failurePolicy=Maybe", "injector.failurePolicy"),
        ("control.port=70000", "control.port"),
        (
            "injector.sidecar.resources.limits.memory=lots",
            "injector.sidecar.resources.limits.memory",
        ),
        ("image.pullPolicy=Sometimes", "image.pullPolicy"),
        ("injector.replica=3", "injector"),
        (
            "control.env.LEASE_TTL=30s",
            "'LEASE_TTL' does not match pattern",
        ),
        (
            "injector.sidecar.caSecret=Not_A_Name",
            "injector.sidecar.caSecret",
        ),
    ] {
        let err = render(&[set]).expect_err(set);
        assert!(
            err.contains("values don't meet the specifications of the schema")
                && (err.contains(&format!("/{}", path.replace('.', "/"))) || err.contains(path)),
            "{set}:\n{err}"
        );
    }
}

/// `deploy/tollgate.yaml` is the chart's default render less the two
/// generated Secrets (and so the caBundle left for the operator).
#[test]
fn deploy_equals_the_charts_defaults() {
    let rendered = render(&[]).unwrap();
    let normalized: Vec<String> = rendered
        .split("\n---\n")
        .filter(|d| !format!("\n{d}\n").contains("\nkind: Secret\n"))
        .map(|d| {
            d.lines()
                .map(|l| {
                    if l.starts_with("      caBundle: ") {
                        "      caBundle: \"\""
                    } else {
                        l
                    }
                })
                .collect::<Vec<_>>()
                .join("\n")
                .trim()
                .to_string()
        })
        .collect();
    let deploy = std::fs::read_to_string(root().join("deploy/tollgate.yaml")).unwrap();
    let body = deploy
        .lines()
        .skip_while(|l| l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    let docs: Vec<String> = body
        .split("\n---\n")
        .map(|d| d.trim().to_string())
        .collect();
    assert_eq!(
        docs, normalized,
        "deploy/tollgate.yaml is not the chart's default render: regenerate it (deploy/README.md)"
    );
}

#[test]
fn deploy_manifests_and_scrape_config_are_valid() {
    let dir = root().join("deploy");
    let mut files: Vec<PathBuf> = vec![dir.join("tollgate.yaml")];
    for e in std::fs::read_dir(dir.join("examples")).unwrap() {
        files.push(e.unwrap().path());
    }
    for f in &files {
        let docs = validate_all(
            &f.display().to_string(),
            &std::fs::read_to_string(f).unwrap(),
        );
        if f.starts_with(dir.join("examples")) {
            let ann = &docs[0]["spec"]["template"]["metadata"]["annotations"];
            assert_eq!(ann["tollgate.dev/inject"], "true", "{}", f.display());
        }
    }
    // Debian's promtool is built without Kubernetes service discovery, so
    // the kubernetes_sd_configs blocks are swapped for empty static ones;
    // everything else (relabelling, regexes) is checked as written.
    let config = std::fs::read_to_string(dir.join("prometheus/prometheus.yml")).unwrap();
    let checkable = config.replace(
        "kubernetes_sd_configs:\n      - role: pod",
        "static_configs:\n      - targets: []",
    );
    assert_ne!(checkable, config);
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("prometheus.yml");
    std::fs::write(&path, checkable).unwrap();
    let out = Command::new(tools::promtool())
        .args(["check", "config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
}

/// The image: the Dockerfile's runtime stage and the chart and injector
/// defaults agree.
#[test]
fn the_image_is_one_static_binary_run_as_nonroot() {
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let froms: Vec<&str> = dockerfile
        .lines()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert_eq!(froms.len(), 2, "multi-stage: {froms:?}");
    assert!(
        froms[1].contains("distroless") && froms[1].contains("nonroot"),
        "{froms:?}"
    );
    assert!(dockerfile.lines().any(|l| l == "USER 65532:65532"));
    let values = std::fs::read_to_string(chart().join("values.yaml")).unwrap();
    let chart_yaml = std::fs::read_to_string(chart().join("Chart.yaml")).unwrap();
    let values = &parse(&values)[0];
    let app_version = parse(&chart_yaml)[0]["appVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let image = format!(
        "{}:{app_version}",
        values["image"]["repository"].as_str().unwrap()
    );
    assert_eq!(image, tollgate::config::inject::DEFAULT_IMAGE);
    assert_eq!(app_version, env!("CARGO_PKG_VERSION"));
    assert!(dockerfile.contains(&format!(
        "org.opencontainers.image.version=\"{app_version}\""
    )));
    assert!(Path::new(&root().join(".ci/image-build-stage")).exists());
}
