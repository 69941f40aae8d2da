#![allow(dead_code)]
//! Test support: the fake provider and a tollgate process builder.

pub mod batches;
pub mod control;
pub mod fake_provider;
pub mod inject;
pub mod node;
pub mod raw;
pub mod reply;
pub mod sdk;
pub mod tollgate;
pub mod tools;

/// A small xorshift: reproducible random sizes and moments without a
/// dependency (tests print or fix the seed).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// In `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// In `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
}

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
