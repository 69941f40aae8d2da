#![allow(dead_code)]
//! Test support: the fake provider and a tollgate process builder.

pub mod fake_provider;
pub mod tollgate;
