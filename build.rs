//! Link settings for the `tollgate` binary (its code is in `src/`).

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let linux_gnu = std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
        && std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu");
    if linux_gnu {
        // Relative relocations packed (DT_RELR, glibc 2.36+, GNU ld 2.38+ or
        // lld): the position-independent binary's 1.1 MiB relocation table,
        // which the loader reads at every start and which then stays mapped
        // in the process's memory, shrinks to a few KiB (README, Memory).
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
