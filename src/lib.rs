//! tollgate: an LLM cost-control sidecar.
//!
//! The binary (`src/main.rs`) is a thin CLI over this library: it loads the
//! [`config::Config`], builds the services and hands them to pingora.
#![forbid(unsafe_code)]

pub mod admin;
pub mod batch;
pub mod budget;
pub mod ca;
pub mod cache;
pub mod config;
pub mod control;
pub mod data_dir;
pub mod dialect;
pub mod envelope;
pub mod idempotency;
pub mod identity;
pub mod inject;
pub mod keys;
pub mod kube_values;
pub mod lease;
pub mod limit;
pub mod meter;
pub mod metrics;
pub mod plan;
pub mod proxy;
pub mod route;
pub mod scope;
pub mod secret;
pub mod snapshot;
pub mod store;
pub mod table;
pub mod usage_report;
