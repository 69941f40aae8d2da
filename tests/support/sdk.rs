//! The official SDKs' virtual environments and the scripts in `tests/sdk/`
//! that drive them (used by `tests/sdk.rs` through tollgate, by
//! `tests/fake_provider.rs` against the fake directly, and by
//! `tests/translate_sdk.rs` against fixed translated answers).
//!
//! Each SDK set lives in its own virtual environment under
//! `<target dir>/sdk-venv/<name>`, created on first use from the pinned
//! `tests/sdk/requirements-<name>.txt` (so a fresh machine needs only
//! `python3` with `venv`, and PyPI).

use std::fs::OpenOptions;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncWriteExt;

/// How long one SDK script may run.
pub const SCRIPT_TIMEOUT: Duration = Duration::from_secs(180);

// ---------------------------------------------------------------------------
// Virtual environments

/// `<target dir>/sdk-venv`: beside the build output, so `cargo clean` resets it.
pub fn venv_root() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target dir")
        .join("sdk-venv")
}

/// FNV-1a over some byte strings (a stable content hash, no extra crate).
pub fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.iter().chain([0xff_u8].iter()) {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

/// Runs a set-up command, panicking with its output when it fails.
pub fn run_setup(cmd: &mut Command, what: &str) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The Python interpreter of the virtual environment `name` (one of
/// `tests/sdk/requirements-<name>.txt`), created on first use.
///
/// Idempotent and safe when several tests or processes ask at once: an
/// exclusive lock on `<root>/<name>.lock` guards "create the venv unless its
/// marker holds the hash of the requirements (and of the Python version)".
/// (`File::lock`, stable since Rust 1.89.)
pub fn sdk_venv(name: &str) -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let requirements_path = manifest.join(format!("tests/sdk/requirements-{name}.txt"));
    let requirements = std::fs::read(&requirements_path)
        .unwrap_or_else(|e| panic!("{}: {e}", requirements_path.display()));
    let python_version = match Command::new("python3").arg("--version").output() {
        Ok(out) if out.status.success() => out.stdout,
        Ok(out) => panic!(
            "`python3 --version` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) if e.kind() == ErrorKind::NotFound => panic!(
            "python3 is not installed: the SDK tests need python3 with the venv module \
             (Debian: apt-get install python3 python3-venv; .ci/run installs them)"
        ),
        Err(e) => panic!("cannot run python3: {e}"),
    };
    let stamp = format!(
        "{:016x}",
        fnv1a(&[requirements.as_slice(), python_version.as_slice()])
    );

    let root = venv_root();
    std::fs::create_dir_all(&root).unwrap();
    let dir = root.join(name);
    let python = dir.join("bin").join("python");
    let marker = dir.join(".tollgate-requirements-hash");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(root.join(format!("{name}.lock")))
        .unwrap();
    // Held until `lock` is dropped at the end of this function.
    lock.lock().expect("lock the venv");
    if python.exists() && std::fs::read_to_string(&marker).ok().as_deref() == Some(&stamp) {
        return python;
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir).unwrap();
    }
    run_setup(
        Command::new("python3").arg("-m").arg("venv").arg(&dir),
        &format!("python3 -m venv {}", dir.display()),
    );
    run_setup(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                "--no-input",
                "-r",
            ])
            .arg(&requirements_path),
        &format!("pip install -r {}", requirements_path.display()),
    );
    std::fs::write(&marker, &stamp).unwrap();
    python
}

/// [`sdk_venv`] off the async runtime (pip may take a while).
pub async fn sdk_python(name: &'static str) -> PathBuf {
    tokio::task::spawn_blocking(move || sdk_venv(name))
        .await
        .unwrap()
}

// ---------------------------------------------------------------------------
// Running the scripts

/// What one script run printed: `{"sdk", "version", "results": [...]}`.
pub struct SdkRun {
    pub sdk: String,
    pub version: String,
    pub results: Vec<Value>,
}

impl SdkRun {
    /// The result of the call named `name`.
    pub fn get(&self, name: &str) -> &Value {
        self.results
            .iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("no result named {name}"))
    }

    /// The result of a call that must have succeeded.
    pub fn ok(&self, name: &str) -> &Value {
        let r = self.get(name);
        assert_eq!(
            r["ok"], true,
            "{} {}: call {name} failed: {r:#}",
            self.sdk, self.version
        );
        r
    }
}

/// Runs `tests/sdk/<script>` with `python`, the plan on stdin, a clean
/// environment plus `env`; returns what it printed.
pub async fn run_script(python: &Path, script: &str, env: &[(&str, &str)], plan: &Value) -> SdkRun {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sdk")
        .join(script);
    run_program(python, &script, env, plan).await
}

/// Runs `program script` (an interpreter and the script's path), the plan
/// on stdin, a clean environment plus `env`; returns what it printed.
pub async fn run_program(
    program: &Path,
    script: &Path,
    env: &[(&str, &str)],
    plan: &Value,
) -> SdkRun {
    let home = tempfile::tempdir().unwrap();
    let mut cmd = tokio::process::Command::new(program);
    cmd.arg(script)
        // Nothing from the developer's environment (proxies, real keys, SDK profiles).
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home.path())
        .env("LANG", "C.UTF-8")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(plan.to_string().as_bytes()).await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(SCRIPT_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{} did not finish in {SCRIPT_TIMEOUT:?}", script.display()))
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{} failed ({}):\nstdout: {stdout}\nstderr: {stderr}",
        script.display(),
        out.status
    );
    let v: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("script output is not JSON ({e}): {stdout}\n{stderr}"));
    SdkRun {
        sdk: v["sdk"].as_str().unwrap_or_default().to_string(),
        version: v["version"].as_str().unwrap_or_default().to_string(),
        results: v["results"].as_array().cloned().unwrap_or_default(),
    }
}
