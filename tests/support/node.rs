//! The official Node SDKs and the scripts in `tests/sdk/node/` that drive
//! them (used by `tests/node_sdk.rs`): the Node twin of [`super::sdk`].
//!
//! The packages pinned in `tests/sdk/node/package.json` (exact versions,
//! with its `package-lock.json`) are installed once with `npm ci` into
//! `<target dir>/node-sdk`, so a fresh machine needs only `node` and `npm`
//! and the npm registry. The scripts are copied beside that `node_modules`
//! (an ES module resolves its imports from where it lies).

use std::fs::OpenOptions;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde_json::Value;

use super::sdk::{fnv1a, run_program, run_setup, SdkRun};

/// `tests/sdk/node`: the package files and the scripts.
fn source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/node")
}

/// `<target dir>/node-sdk`: beside the build output, so `cargo clean` resets it.
pub fn node_sdk_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target dir")
        .join("node-sdk")
}

/// `node --version`; a missing `node` fails the test with what to install
/// (these tests are never skipped).
fn node_version() -> Vec<u8> {
    match Command::new("node").arg("--version").output() {
        Ok(out) if out.status.success() => out.stdout,
        Ok(out) => panic!(
            "`node --version` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) if e.kind() == ErrorKind::NotFound => panic!(
            "node is not installed: the Node SDK tests (tests/node_sdk.rs) need Node.js 20 \
             or later with npm on PATH (Debian: apt-get install nodejs npm; .ci/run installs them)"
        ),
        Err(e) => panic!("cannot run node: {e}"),
    }
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Writes `bytes` to `path` unless it already holds them, through a
/// temporary file and a rename (a script another test runs is never seen
/// half written).
fn write_if_changed(path: &Path, bytes: &[u8]) {
    if std::fs::read(path).ok().as_deref() == Some(bytes) {
        return;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap_or_else(|e| panic!("{}: {e}", tmp.display()));
    std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// The install directory, its `node_modules` installed from the pinned
/// package files on first use and the scripts of `tests/sdk/node` copied
/// into it.
///
/// Idempotent and safe when several tests or processes ask at once: an
/// exclusive lock on `<target dir>/node-sdk.lock` guards "run `npm ci`
/// unless the marker holds the hash of the package files (and of the Node
/// version)". (`File::lock`, stable since Rust 1.89.)
pub fn node_sdk() -> PathBuf {
    let src = source_dir();
    let package = read(&src.join("package.json"));
    let lockfile = read(&src.join("package-lock.json"));
    let stamp = format!(
        "{:016x}",
        fnv1a(&[package.as_slice(), lockfile.as_slice(), &node_version()])
    );

    let dir = node_sdk_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.with_extension("lock"))
        .unwrap();
    // Held until `lock` is dropped at the end of this function.
    lock.lock().expect("lock the Node SDK dir");
    let marker = dir.join(".tollgate-packages-hash");
    let installed = dir.join("node_modules").is_dir()
        && std::fs::read_to_string(&marker).ok().as_deref() == Some(&stamp);
    if !installed {
        let _ = std::fs::remove_file(&marker);
        std::fs::write(dir.join("package.json"), &package).unwrap();
        std::fs::write(dir.join("package-lock.json"), &lockfile).unwrap();
        let started = Instant::now();
        // `npm ci`: exactly the lock file's versions, `node_modules` anew.
        run_setup(
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                .current_dir(&dir),
            &format!("npm ci in {}", dir.display()),
        );
        eprintln!(
            "node-sdk: npm ci in {} took {:.1?}",
            dir.display(),
            started.elapsed()
        );
        std::fs::write(&marker, &stamp).unwrap();
    }
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "mjs") {
            let name = path.file_name().expect("a file name");
            write_if_changed(&dir.join(name), &read(&path));
        }
    }
    dir
}

/// Runs `tests/sdk/node/<script>` with `node` (the SDKs installed on first
/// use, off the async runtime), the plan on stdin, a clean environment plus
/// `env`; returns what it printed.
pub async fn run_node_script(script: &str, env: &[(&str, &str)], plan: &Value) -> SdkRun {
    let dir = tokio::task::spawn_blocking(node_sdk).await.unwrap();
    run_program(Path::new("node"), &dir.join(script), env, plan).await
}
