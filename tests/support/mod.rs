#![allow(dead_code)]
//! Test support: the fake provider and a tollgate process builder.

pub mod control;
pub mod fake_provider;
pub mod raw;
pub mod tollgate;

/// reqwest is built without a crypto provider (tollgate installs ring at
/// start): test clients need the same, once per process.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Every file under `dir` (path, bytes): to grep a data dir for secrets.
pub fn files_under(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read a dir") {
            let p = e.expect("a dir entry").path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                out.push((p.display().to_string(), bytes));
            }
        }
    }
    out
}
