//! The external tools some tests run (kubernetes-validate, helm, promtool,
//! prometheus): `.ci/k8s-tools` installs them and `.ci/run` exports where
//! (`CI_TOOL_KUBERNETES_VALIDATE`, …). Without the variable a test looks
//! where `.ci/k8s-tools` puts the tool by default; a tool that is nowhere
//! fails the test with what to run, never skips it.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

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
        "{var}: {} is not installed; run `.ci/run` (or `eval \"$(.ci/k8s-tools)\"`), which installs it and exports {var}",
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

/// `kubernetes-validate --strict -k VERSION -` on `docs` (YAML or JSON,
/// several documents allowed): `Err(output)` when it finds a problem.
pub fn validate(version: &str, docs: &str) -> Result<(), String> {
    let mut child = Command::new(kubernetes_validate())
        .args(["--strict", "--quiet", "-k", version, "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kubernetes-validate");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(docs.as_bytes())
        .expect("write to kubernetes-validate");
    let out = child.wait_with_output().expect("kubernetes-validate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // It exits 0 on warnings too (e.g. an unknown version): only a clean,
    // silent pass counts.
    if out.status.success() && text.trim().is_empty() {
        Ok(())
    } else {
        Err(text)
    }
}
