//! `tollgate inject`: the mutating admission webhook that adds the sidecar
//! to pods annotated `tollgate.dev/inject: "true"` (or in a namespace so
//! annotated).
//!
//! ```text
//! API server ──POST /mutate──▶ review::Request::parse ──▶ namespaces (only when the pod has no wish)
//!                                         │
//!             ◀── AdmissionReview ── review::decide ──▶ annotations::settings ──▶ patch::build
//! ```
//!
//! `review` decides and answers (always echoing the request's uid),
//! `annotations` reads and checks the `tollgate.dev/*` overrides, `patch`
//! builds the JSONPatch, `namespaces` reads namespaces' annotations from the
//! API server, `tls` keeps the certificate fresh, `server` serves it all.

pub mod annotations;
pub mod metrics;
pub mod namespaces;
pub mod patch;
pub mod review;
pub mod server;
pub mod tls;
