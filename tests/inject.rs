//! `tollgate inject` through the real binary over HTTPS, with real
//! AdmissionReview v1 bodies (variants of one captured from a kube-apiserver,
//! `tests/k8s/review-pod-create.json`). Every patch is applied to the pod it
//! came with (json-patch, RFC 6902) and the result validated with
//! `kubernetes-validate --strict`: the native-sidecar form at 1.29 and at the
//! newest version it knows, and refused at 1.27 (before native sidecars);
//! the classic form at 1.25, the oldest version it knows (it has no 1.20
//! schemas; the 1.20 API server round trip is left out, see the README).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};
use support::inject::{client_trusting, self_signed, Inject};
use support::tools;

/// The newest Kubernetes version kubernetes-validate knows, and the oldest.
const NEWEST: &str = "1.37.0";
const OLDEST: &str = "1.25.0";

/// The captured review of `kubectl apply` of a pod annotated
/// `tollgate.dev/inject: "true"` with one container `app`.
fn captured() -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/k8s/review-pod-create.json"
    ))
    .unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The captured review with `uid`, and the pod's annotations replaced.
fn review(uid: &str, annotations: &[(&str, &str)]) -> Value {
    let mut r = captured();
    r["request"]["uid"] = json!(uid);
    let ann: BTreeMap<&str, &str> = annotations.iter().copied().collect();
    r["request"]["object"]["metadata"]["annotations"] = json!(ann);
    r
}

fn pod_of(review: &Value) -> Value {
    review["request"]["object"].clone()
}

/// The answer's `response`, checked against the AdmissionReview v1 schema
/// (uid echoed, base64 patch with patchType).
fn response<'a>(review: &Value, answer: &'a Value) -> &'a Value {
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1", "{answer}");
    assert_eq!(answer["kind"], "AdmissionReview", "{answer}");
    let res = &answer["response"];
    assert_eq!(
        res["uid"], review["request"]["uid"],
        "uid not echoed: {answer}"
    );
    check_schema(answer);
    res
}

/// Validates `answer` with the JSON Schema in tests/k8s (python's
/// jsonschema, installed with kubernetes-validate in its venv).
fn check_schema(answer: &Value) {
    let python = tools::kubernetes_validate().with_file_name("python");
    let schema = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/k8s/admissionreview-v1.schema.json"
    );
    let out = tools::run_with_stdin(
        Command::new(python).args([
            "-c",
            "import json,sys,jsonschema; jsonschema.validate(json.load(sys.stdin), json.load(open(sys.argv[1])))",
            schema,
        ]),
        answer.to_string().as_bytes(),
    );
    assert!(
        out.status.success(),
        "answer does not match the AdmissionReview schema: {}\n{answer}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The patch of an allowed answer applied to `pod`; `None` when the answer
/// has no patch.
fn patched(pod: &Value, res: &Value) -> Option<Value> {
    assert_eq!(res["allowed"], true, "{res}");
    let patch = res.get("patch")?.as_str().expect("patch is base64 text");
    assert_eq!(res["patchType"], "JSONPatch");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(patch)
        .unwrap();
    let ops: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
    for op in &ops.0 {
        assert!(
            matches!(op, json_patch::PatchOperation::Add(_)),
            "only adds: {op:?}"
        );
    }
    let mut out = pod.clone();
    json_patch::patch(&mut out, &ops).unwrap_or_else(|e| panic!("{e}: {ops:?}"));
    Some(out)
}

/// kubernetes-validate --strict of `pod` at `version`.
fn valid_at(version: &str, pod: &Value) -> Result<(), String> {
    // The review's object carries fields the API server fills in
    // (creationTimestamp: null) that the schema allows; it is a real pod.
    tools::validate(version, &pod.to_string())
}

fn assert_valid(versions: &[&str], pod: &Value) {
    for v in versions {
        if let Err(e) = valid_at(v, pod) {
            panic!("not valid at {v}: {e}\n{pod:#}");
        }
    }
}

fn container<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name} in {list}"))
}

/// The value (or the fieldRef path) of `name` in a container's env.
fn env<'a>(c: &'a Value, name: &str) -> Option<&'a Value> {
    let e = c["env"].as_array()?.iter().find(|e| e["name"] == name)?;
    Some(if e.get("value").is_some() {
        &e["value"]
    } else {
        &e["valueFrom"]
    })
}

fn env_names(c: &Value) -> Vec<String> {
    c["env"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| e["name"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The sidecar's environment, as the kubelet would give it (downward API and
/// Secret references resolved), is a config `tollgate proxy` accepts.
fn sidecar_config_is_valid(sidecar: &Value) {
    let env: Vec<(String, String)> = sidecar["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let value = match (e.get("value"), &e["valueFrom"]) {
                (Some(v), _) => v.as_str().unwrap().to_string(),
                (None, from) if from.get("fieldRef").is_some() => {
                    match from["fieldRef"]["fieldPath"].as_str().unwrap() {
                        "metadata.name" => "web-5d8f7c9b4-x2k9z".into(),
                        "metadata.namespace" => "search".into(),
                        "spec.serviceAccountName" => "search-app".into(),
                        other => panic!("unexpected fieldRef {other}"),
                    }
                }
                (None, from) if from.get("secretKeyRef").is_some() => "tgs_from_the_secret".into(),
                (None, from) => panic!("unexpected valueFrom {from}"),
            };
            (e["name"].as_str().unwrap().to_string(), value)
        })
        .collect();
    assert_eq!(sidecar["args"], json!(["proxy"]));
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["proxy", "--check-config"])
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the injected sidecar's config is refused: {}\n{env:?}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// === the captured review ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_annotated_pod_gets_a_native_sidecar_and_the_base_urls() {
    let inject = Inject::start("", &[]);
    let r = captured();
    let started = Instant::now();
    let (status, answer) = inject.review(&r).await;
    // The API server waits at most the webhook's timeoutSeconds (5 s in
    // the chart): an answer is local work.
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(status, 200, "{answer}");
    let res = response(&r, &answer);
    let pod = patched(&pod_of(&r), res).expect("a patch");
    let sidecar = &pod["spec"]["initContainers"][0];
    assert_eq!(sidecar["name"], "tollgate");
    assert_eq!(sidecar["restartPolicy"], "Always");
    assert_eq!(sidecar["args"], json!(["proxy"]));
    assert_eq!(sidecar["startupProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(sidecar["startupProbe"]["httpGet"]["port"], 9464);
    assert_eq!(sidecar["securityContext"]["runAsNonRoot"], true);
    assert_eq!(sidecar["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        sidecar["securityContext"]["capabilities"]["drop"],
        json!(["ALL"])
    );
    assert_eq!(sidecar["resources"]["requests"]["cpu"], "50m");
    assert_eq!(sidecar["resources"]["limits"]["memory"], "256Mi");
    // Pod identity as the sidecar's defaults, through the downward API.
    assert_eq!(
        env(sidecar, "TOLLGATE_DEFAULT_ACCOUNT").unwrap()["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    assert_eq!(
        env(sidecar, "TOLLGATE_DEFAULT_WORKLOAD").unwrap()["fieldRef"]["fieldPath"],
        "spec.serviceAccountName"
    );
    assert_eq!(env(sidecar, "TOLLGATE_LISTEN").unwrap(), "127.0.0.1:8787");
    // Standalone by default: no control endpoint, no credential.
    assert!(env(sidecar, "TOLLGATE_CONTROL_URL").is_none());
    let app = container(&pod["spec"]["containers"], "app");
    assert_eq!(
        env(app, "ANTHROPIC_BASE_URL").unwrap(),
        "http://127.0.0.1:8787"
    );
    assert_eq!(
        env(app, "OPENAI_BASE_URL").unwrap(),
        "http://127.0.0.1:8787/v1"
    );
    assert!(env(app, "HTTPS_PROXY").is_none());
    assert_eq!(
        pod["metadata"]["annotations"]["tollgate.dev/injected"],
        "native"
    );
    assert_valid(&["1.29.0", NEWEST], &pod);
    sidecar_config_is_valid(sidecar);
    // Native sidecars do not exist before 1.28: the strict schema says so.
    let old = valid_at("1.27.0", &pod).unwrap_err();
    assert!(old.contains("restartPolicy"), "{old}");

    // The patched pod again (reinvocationPolicy: IfNeeded): unchanged.
    let mut again = r.clone();
    again["request"]["uid"] = json!("second-look");
    again["request"]["object"] = pod.clone();
    let (_, answer) = inject.review(&again).await;
    let res = response(&again, &answer);
    assert!(patched(&pod, res).is_none(), "{answer}");

    let metrics = inject.metrics().await;
    for line in [
        "tollgate_inject_reviews_total{decision=\"injected\",sidecar_mode=\"native\"} 1",
        "tollgate_inject_reviews_total{decision=\"already_injected\",sidecar_mode=\"none\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }
    let log = inject.log();
    assert!(
        log.contains("decision=\"injected\"") && log.contains("pod=\"annotated\""),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_and_opted_out_pods_are_left_alone() {
    let inject = Inject::start("", &[]);
    for (uid, ann) in [
        ("plain", vec![]),
        ("opted-out", vec![("tollgate.dev/inject", "false")]),
        // Other annotations of ours without the wish: nothing either.
        ("mode-only", vec![("tollgate.dev/mode", "https-proxy")]),
    ] {
        let r = review(uid, &ann);
        let (status, answer) = inject.review(&r).await;
        assert_eq!(status, 200);
        let res = response(&r, &answer);
        assert!(patched(&pod_of(&r), res).is_none(), "{uid}: {answer}");
    }
    let metrics = inject.metrics().await;
    assert!(
        metrics.contains("decision=\"not_requested\",sidecar_mode=\"none\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("decision=\"opted_out\",sidecar_mode=\"none\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_mode_adds_a_container_valid_before_native_sidecars() {
    let inject = Inject::start("sidecar_mode = \"classic\"", &[]);
    let r = captured();
    let (_, answer) = inject.review(&r).await;
    let pod = patched(&pod_of(&r), response(&r, &answer)).expect("a patch");
    assert!(pod["spec"].get("initContainers").is_none(), "{pod}");
    let sidecar = container(&pod["spec"]["containers"], "tollgate");
    assert!(sidecar.get("restartPolicy").is_none());
    assert_eq!(
        pod["metadata"]["annotations"]["tollgate.dev/injected"],
        "classic"
    );
    assert_valid(&[OLDEST, "1.27.0", NEWEST], &pod);
    // Per pod, the annotation picks native again.
    let r = review(
        "native-by-annotation",
        &[
            ("tollgate.dev/inject", "true"),
            ("tollgate.dev/sidecar-mode", "native"),
        ],
    );
    let (_, answer) = inject.review(&r).await;
    let pod = patched(&pod_of(&r), response(&r, &answer)).unwrap();
    assert_eq!(pod["spec"]["initContainers"][0]["restartPolicy"], "Always");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_proxy_mode_mounts_the_ca_certificate_never_its_key() {
    let inject = Inject::start(
        "control_url = \"https://tollgate-control.tollgate.svc:8790\"\ncredential_secret = \"tollgate-sidecar\"",
        &[],
    );
    let mut r = review(
        "proxy",
        &[
            ("tollgate.dev/inject", "true"),
            ("tollgate.dev/mode", "https-proxy"),
        ],
    );
    r["request"]["object"]["metadata"]["labels"] = json!({"app": "search", "tier": "web"});
    let (_, answer) = inject.review(&r).await;
    let pod = patched(&pod_of(&r), response(&r, &answer)).expect("a patch");
    let app = container(&pod["spec"]["containers"], "app");
    assert_eq!(env(app, "HTTPS_PROXY").unwrap(), "http://127.0.0.1:8788");
    let no_proxy = env(app, "NO_PROXY").unwrap().as_str().unwrap();
    assert!(
        no_proxy.contains(".svc") && no_proxy.ends_with("$(TOLLGATE_POD_IP)"),
        "{no_proxy}"
    );
    // $(…) expands only variables defined before it in the list.
    let names = env_names(app);
    let pos = |n: &str| names.iter().position(|x| x == n).unwrap();
    assert!(pos("TOLLGATE_POD_IP") < pos("NO_PROXY"));
    assert_eq!(env(app, "NODE_USE_ENV_PROXY").unwrap(), "1");
    for var in ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS"] {
        assert_eq!(
            env(app, var).unwrap(),
            "/etc/tollgate/ca-bundle/ca.pem",
            "{var}"
        );
    }
    assert!(env(app, "ANTHROPIC_BASE_URL").is_none());
    let volumes = pod["spec"]["volumes"].as_array().unwrap();
    let volume = |name: &str| volumes.iter().find(|v| v["name"] == name).unwrap();
    // The app's volume holds the certificate only.
    assert_eq!(
        volume("tollgate-ca-bundle")["secret"]["items"],
        json!([{"key": "ca.pem", "path": "ca.pem", "mode": 0o444}])
    );
    let app_mounts: Vec<&Value> = app["volumeMounts"].as_array().unwrap().iter().collect();
    assert_eq!(app_mounts.len(), 1);
    assert_eq!(app_mounts[0]["name"], "tollgate-ca-bundle");
    assert_eq!(volume("tollgate-ca")["secret"]["secretName"], "tollgate-ca");
    let sidecar = &pod["spec"]["initContainers"][0];
    assert_eq!(
        env(sidecar, "TOLLGATE_FORWARD_PROXY_LISTEN").unwrap(),
        "127.0.0.1:8788"
    );
    assert_eq!(env(sidecar, "TOLLGATE_CA_DIR").unwrap(), "/etc/tollgate/ca");
    assert_eq!(
        env(sidecar, "TOLLGATE_CONTROL_URL").unwrap(),
        "https://tollgate-control.tollgate.svc:8790"
    );
    assert_eq!(
        env(sidecar, "TOLLGATE_CONTROL_CREDENTIAL").unwrap()["secretKeyRef"],
        json!({"name": "tollgate-sidecar", "key": "credential", "optional": false})
    );
    // Selected labels (app.kubernetes.io/name, app) become tags; others not.
    assert_eq!(env(sidecar, "TOLLGATE_DEFAULT_TAGS").unwrap(), "app=search");
    assert_valid(&["1.29.0", NEWEST], &pod);
    sidecar_config_is_valid(sidecar);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_containers_init_containers_and_the_apps_own_env() {
    let inject = Inject::start("", &[]);
    let mut r = captured();
    let spec = &mut r["request"]["object"]["spec"];
    spec["containers"] = json!([
        {"name": "app", "image": "busybox:1.36",
         "env": [{"name": "ANTHROPIC_BASE_URL", "value": "https://gateway.example"},
                 {"name": "LOG", "value": "debug"}],
         "volumeMounts": [{"name": "cfg", "mountPath": "/cfg"}]},
        {"name": "worker", "image": "busybox:1.36", "ports": [{"containerPort": 8080}]}
    ]);
    spec["initContainers"] = json!([{"name": "migrate", "image": "busybox:1.36"}]);
    spec["volumes"] = json!([{"name": "cfg", "emptyDir": {}}]);
    let (_, answer) = inject.review(&r).await;
    let pod = patched(&pod_of(&r), response(&r, &answer)).expect("a patch");
    let inits = pod["spec"]["initContainers"].as_array().unwrap();
    // The sidecar first, so that it is ready before `migrate` runs.
    let names: Vec<&str> = inits.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["tollgate", "migrate"]);
    assert_eq!(
        env(&inits[1], "OPENAI_BASE_URL").unwrap(),
        "http://127.0.0.1:8787/v1"
    );
    let app = container(&pod["spec"]["containers"], "app");
    // The app's own value wins, and no name appears twice.
    assert_eq!(
        env(app, "ANTHROPIC_BASE_URL").unwrap(),
        "https://gateway.example"
    );
    assert_eq!(
        env_names(app),
        ["ANTHROPIC_BASE_URL", "LOG", "OPENAI_BASE_URL"]
    );
    let worker = container(&pod["spec"]["containers"], "worker");
    assert_eq!(
        env(worker, "ANTHROPIC_BASE_URL").unwrap(),
        "http://127.0.0.1:8787"
    );
    let volumes: Vec<&str> = pod["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(volumes, ["cfg", "tollgate-data", "tollgate-tmp"]);
    assert_valid(&["1.29.0", NEWEST], &pod);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_and_generate_name_pods_are_injected_the_same() {
    let inject = Inject::start("", &[]);
    let plain = captured();
    let (_, answer) = inject.review(&plain).await;
    let expected = response(&plain, &answer)["patch"].clone();
    // A Deployment's pod: no name yet, only generateName.
    let mut r = captured();
    r["request"]["uid"] = json!("rs-pod");
    r["request"]["name"] = json!("");
    r["request"]["dryRun"] = json!(true);
    let meta = &mut r["request"]["object"]["metadata"];
    meta.as_object_mut().unwrap().remove("name");
    meta["generateName"] = json!("web-5d8f7c9b4-");
    let (_, answer) = inject.review(&r).await;
    let res = response(&r, &answer);
    assert_eq!(res["patch"], expected);
    let pod = patched(&pod_of(&r), res).unwrap();
    assert_valid(&[NEWEST], &pod);
    let log = inject.log();
    assert!(
        log.contains("pod=\"web-5d8f7c9b4-*\"") && log.contains("dry_run=true"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_annotations_deny_the_pod_naming_each_and_the_fix() {
    let inject = Inject::start("", &[]);
    let r = review(
        "bad",
        &[
            ("tollgate.dev/inject", "true"),
            ("tollgate.dev/cpu-limit", "lots"),
            ("tollgate.dev/mode", "sidecar"),
            ("tollgate.dev/port", "70000"),
            ("tollgate.dev/memry-limit", "1Gi"),
        ],
    );
    let (status, answer) = inject.review(&r).await;
    assert_eq!(status, 200);
    let res = response(&r, &answer);
    assert_eq!(res["allowed"], false, "{answer}");
    assert!(res.get("patch").is_none());
    assert_eq!(res["status"]["code"], 400);
    let message = res["status"]["message"].as_str().unwrap();
    for want in [
        "tollgate.dev/cpu-limit=\"lots\": must be a Kubernetes quantity, e.g. \"100m\"",
        "tollgate.dev/mode=\"sidecar\": must be base-url or https-proxy",
        "tollgate.dev/port=\"70000\": must be a port number from 1 to 65535",
        "tollgate.dev/memry-limit=\"1Gi\": not a tollgate annotation; remove it or use one of",
    ] {
        assert!(message.contains(want), "{want:?} missing: {message}");
    }
    // A wish that is neither "true" nor "false".
    let r = review("yes", &[("tollgate.dev/inject", "yes")]);
    let (_, answer) = inject.review(&r).await;
    let message = response(&r, &answer)["status"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("tollgate.dev/inject=\"yes\": must be \"true\" or \"false\""),
        "{message}"
    );
    // The app's own port is the sidecar's: the annotation that moves it.
    let mut r = captured();
    r["request"]["object"]["spec"]["containers"][0]["ports"] = json!([{"containerPort": 9464}]);
    let (_, answer) = inject.review(&r).await;
    let res = response(&r, &answer);
    assert_eq!(res["allowed"], false);
    let message = res["status"]["message"].as_str().unwrap();
    assert!(
        message.contains(
            "port 9464 is used by container \"app\"; set tollgate.dev/admin-port to a free port"
        ),
        "{message}"
    );
    let metrics = inject.metrics().await;
    assert!(
        metrics.contains("decision=\"denied\",sidecar_mode=\"none\"} 3"),
        "{metrics}"
    );
    assert!(inject.log().contains("pod denied"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_pod_overrides_are_applied() {
    let inject = Inject::start("", &[]);
    let r = review(
        "overrides",
        &[
            ("tollgate.dev/inject", "true"),
            ("tollgate.dev/image", "registry.example/tollgate:dev"),
            ("tollgate.dev/port", "9787"),
            ("tollgate.dev/cpu-limit", "500m"),
            ("tollgate.dev/account", "acme"),
            ("tollgate.dev/workload", "search"),
        ],
    );
    let (_, answer) = inject.review(&r).await;
    let pod = patched(&pod_of(&r), response(&r, &answer)).unwrap();
    let sidecar = &pod["spec"]["initContainers"][0];
    assert_eq!(sidecar["image"], "registry.example/tollgate:dev");
    assert_eq!(sidecar["resources"]["limits"]["cpu"], "500m");
    assert_eq!(env(sidecar, "TOLLGATE_LISTEN").unwrap(), "127.0.0.1:9787");
    assert_eq!(env(sidecar, "TOLLGATE_DEFAULT_ACCOUNT").unwrap(), "acme");
    assert_eq!(env(sidecar, "TOLLGATE_DEFAULT_WORKLOAD").unwrap(), "search");
    let app = container(&pod["spec"]["containers"], "app");
    assert_eq!(
        env(app, "ANTHROPIC_BASE_URL").unwrap(),
        "http://127.0.0.1:9787"
    );
    assert_valid(&[NEWEST], &pod);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_a_review_is_400_and_other_operations_pass_untouched() {
    let inject = Inject::start("", &[]);
    let (status, _) = inject.review(&json!({"hello": "world"})).await;
    assert_eq!(status, 400);
    let mut r = captured();
    r["request"]["operation"] = json!("UPDATE");
    r["request"]["oldObject"] = r["request"]["object"].clone();
    let (status, answer) = inject.review(&r).await;
    assert_eq!(status, 200);
    let res = response(&r, &answer);
    assert!(patched(&pod_of(&r), res).is_none());
    let metrics = inject.metrics().await;
    assert!(
        metrics.contains("decision=\"invalid\",sidecar_mode=\"none\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("decision=\"ignored\",sidecar_mode=\"none\"} 1"),
        "{metrics}"
    );
}

// === namespaces ===

/// A loopback stand-in for the API server's `GET /api/v1/namespaces/NAME`
/// (the one call the injector makes), answering the Namespace object as the
/// API server does; counts the calls.
fn namespace_api(annotations: BTreeMap<&'static str, Value>) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 4096];
            let n = stream.read(&mut buf).unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]).to_string();
            counter.fetch_add(1, Ordering::SeqCst);
            let path = head.split_whitespace().nth(1).unwrap_or("");
            let name = path.strip_prefix("/api/v1/namespaces/").unwrap_or("");
            let (status, body) = match annotations.get(name) {
                Some(ann) => (
                    "200 OK",
                    json!({"kind": "Namespace", "apiVersion": "v1",
                           "metadata": {"name": name, "annotations": ann},
                           "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}})
                    .to_string(),
                ),
                None => (
                    "404 Not Found",
                    json!({"kind": "Status", "code": 404}).to_string(),
                ),
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (url, calls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_annotation_injects_its_pods_unless_they_opt_out() {
    let (api, calls) = namespace_api(BTreeMap::from([
        ("team-a", json!({"tollgate.dev/inject": "true"})),
        ("team-b", json!({})),
    ]));
    let inject = Inject::start(
        &format!("kube_api_url = \"{api}\"\nnamespace_cache = \"1h\""),
        &[],
    );
    let in_ns = |uid: &str, ns: &str, ann: &[(&str, &str)]| {
        let mut r = review(uid, ann);
        r["request"]["namespace"] = json!(ns);
        r["request"]["object"]["metadata"]["namespace"] = json!(ns);
        r
    };
    let cases = [
        (in_ns("a1", "team-a", &[]), true),
        (in_ns("a2", "team-a", &[]), true),
        (
            in_ns("a3", "team-a", &[("tollgate.dev/inject", "false")]),
            false,
        ),
        (in_ns("b1", "team-b", &[]), false),
        (
            in_ns("b2", "team-b", &[("tollgate.dev/inject", "true")]),
            true,
        ),
        // A namespace that cannot be read: only the pod's wish counts.
        (in_ns("c1", "gone", &[]), false),
    ];
    for (r, injected) in &cases {
        let (_, answer) = inject.review(r).await;
        let res = response(r, &answer);
        let pod = patched(&pod_of(r), res);
        assert_eq!(
            pod.is_some(),
            *injected,
            "{}: {answer}",
            r["request"]["uid"]
        );
        if let Some(pod) = pod {
            assert_valid(&[NEWEST], &pod);
        }
    }
    // team-a read once (then cached), team-b once, gone once; pods with
    // their own wish never ask.
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let metrics = inject.metrics().await;
    assert!(
        metrics.contains("tollgate_inject_namespace_lookups_total{result=\"hit\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tollgate_inject_namespace_lookups_total{result=\"failed\"} 1"),
        "{metrics}"
    );
}

// === serving ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_served_without_a_restart() {
    let inject = Inject::start("tls_reload = \"100ms\"", &[]);
    let old = client_trusting(&inject.cert_pem);
    let health = format!("{}/healthz", inject.url());
    assert_eq!(old.get(&health).send().await.unwrap().status(), 200);
    // A half-written pair (a certificate without its key) is not taken.
    let (cert, key) = self_signed();
    std::fs::write(&inject.cert_path, &cert).unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let fresh = || client_trusting(&inject.cert_pem);
    assert_eq!(fresh().get(&health).send().await.unwrap().status(), 200);
    std::fs::write(&inject.key_path, &key).unwrap();
    let new = client_trusting(&cert);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(resp) = new.get(&health).send().await {
            assert_eq!(resp.status(), 200);
            break;
        }
        assert!(Instant::now() < deadline, "not reloaded:\n{}", inject.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        fresh().get(&health).send().await.is_err(),
        "the old certificate is still served"
    );
    let metrics = inject.metrics().await;
    assert!(
        metrics.contains("tollgate_inject_tls_reloads_total{result=\"failed\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tollgate_inject_tls_reloads_total{result=\"reloaded\"} 1"),
        "{metrics}"
    );
}

#[test]
fn check_config_names_every_problem_and_the_service_links_pass() {
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["inject", "--check-config"])
        .env("TOLLGATE_INJECT_SIDECAR_MODE", "sidecar")
        .env("TOLLGATE_INJECT_CPU_LIMIT", "lots")
        .env("TOLLGATE_INJECT_LISTN", "0.0.0.0:8443")
        // A Service named tollgate-inject in the injector's namespace.
        .env("TOLLGATE_INJECT_SERVICE_HOST", "10.96.0.12")
        .env("TOLLGATE_INJECT_PORT", "tcp://10.96.0.12:443")
        .env("TOLLGATE_INJECT_PORT_443_TCP_ADDR", "10.96.0.12")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "tls_cert: required",
        "tls_key: required",
        "sidecar_mode (from env TOLLGATE_INJECT_SIDECAR_MODE): \"sidecar\" is not native or classic",
        "cpu_limit (from env TOLLGATE_INJECT_CPU_LIMIT): \"lots\" is not a Kubernetes quantity",
        "listn (from env TOLLGATE_INJECT_LISTN): unknown key",
    ] {
        assert!(err.contains(want), "{want:?} missing:\n{err}");
    }
    assert!(
        !err.contains("SERVICE_HOST") && !err.contains("TOLLGATE_INJECT_PORT"),
        "{err}"
    );
    // The injector's variables are not the sidecar's problem either.
    let ok = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["proxy", "--check-config"])
        .env("TOLLGATE_INJECT_TLS_CERT", "/tls/tls.crt")
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}
