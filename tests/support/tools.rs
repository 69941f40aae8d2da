//! The external tools some tests run (kubernetes-validate, helm, promtool,
//! prometheus): `.ci/k8s-tools` installs them and `.ci/run` exports where
//! (`CI_TOOL_KUBERNETES_VALIDATE`, …). Without the variable a test looks
//! where `.ci/k8s-tools` puts the tool by default; a tool that is nowhere
//! fails the test with what to run, never skips it.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

/// `.ci/k8s-tools`'s cache: `$CI_TOOLS_CACHE`, else `~/.cache/tollgate-ci`.
fn cache() -> PathBuf {
    match std::env::var_os("CI_TOOLS_CACHE") {
        Some(dir) => PathBuf::from(dir),
        None => {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/tollgate-ci")
        }
    }
}

/// The tool named by `var`, else at `default`; panics with the fix.
fn tool(var: &str, default: PathBuf) -> PathBuf {
    let path = std::env::var_os(var).map(PathBuf::from).unwrap_or(default);
    assert!(
        path.is_file(),
        "{var}: {} is not installed; run `.ci/run` (or `eval \"$(.ci/k8s-tools)\"` and `eval \"$(.ci/kube-apiserver)\"`), which install it and export {var}",
        path.display()
    );
    path
}

pub fn kubernetes_validate() -> PathBuf {
    tool(
        "CI_TOOL_KUBERNETES_VALIDATE",
        cache().join("k8s-venv/bin/kubernetes-validate"),
    )
}

pub fn helm() -> PathBuf {
    tool("CI_TOOL_HELM", cache().join("bin/helm"))
}

pub fn promtool() -> PathBuf {
    tool("CI_TOOL_PROMTOOL", PathBuf::from("/usr/bin/promtool"))
}

pub fn prometheus() -> PathBuf {
    tool("CI_TOOL_PROMETHEUS", PathBuf::from("/usr/bin/prometheus"))
}

/// Runs `cmd` with `input` on its standard input; its output.
pub fn run_with_stdin(cmd: &mut Command, input: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .unwrap_or_else(|e| panic!("writing to {cmd:?}: {e}"));
    child.wait_with_output().expect("the tool's output")
}

/// Its standard output and error, as text.
pub fn said(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `kubernetes-validate --strict -k VERSION -` on `docs` (YAML or JSON,
/// several documents allowed): `Err(output)` when it finds a problem.
pub fn validate(version: &str, docs: &str) -> Result<(), String> {
    let out = run_with_stdin(
        Command::new(kubernetes_validate()).args(["--strict", "--quiet", "-k", version, "-"]),
        docs.as_bytes(),
    );
    let text = said(&out);
    // It exits 0 on warnings too (e.g. an unknown version): only a clean,
    // silent pass counts.
    if out.status.success() && text.trim().is_empty() {
        Ok(())
    } else {
        Err(text)
    }
}

/// The YAML documents of `yaml` as JSON (PyYAML, from kubernetes-validate's
/// venv), empty documents left out.
pub fn parse_yaml(yaml: &str) -> Vec<serde_json::Value> {
    let python = kubernetes_validate().with_file_name("python");
    let out = run_with_stdin(
        Command::new(python).args([
            "-c",
            "import json,sys,yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))",
        ]),
        yaml.as_bytes(),
    );
    assert!(out.status.success(), "{}", said(&out));
    serde_json::from_slice(&out.stdout).expect("JSON from PyYAML")
}

/// `.ci/kube-apiserver`'s build of kube-apiserver 1.20.
pub fn kube_apiserver() -> PathBuf {
    tool(
        "CI_TOOL_KUBE_APISERVER",
        cache().join("kube-1.20/bin/kube-apiserver"),
    )
}

pub fn kube_controller_manager() -> PathBuf {
    tool(
        "CI_TOOL_KUBE_CONTROLLER_MANAGER",
        cache().join("kube-1.20/bin/kube-controller-manager"),
    )
}

/// Debian's etcd-server.
pub fn etcd() -> PathBuf {
    tool("CI_TOOL_ETCD", PathBuf::from("/usr/bin/etcd"))
}
