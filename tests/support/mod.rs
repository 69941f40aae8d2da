#![allow(dead_code)]
//! Test support: the fake provider and a tollgate process builder.

pub mod control;
pub mod fake_provider;
pub mod tollgate;

/// reqwest is built without a crypto provider (tollgate installs ring at
/// start): test clients need the same, once per process.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
