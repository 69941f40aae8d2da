//! The drivers (tap, assembler, replay) over both dialects.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod codec;
mod tap;
