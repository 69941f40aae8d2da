//! Documentation stays in step with the code: every config key is in the
//! README's table, and every shipped example config is valid.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[test]
fn readme_documents_every_config_key() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    for (key, _, _, _) in tollgate::config::KEYS {
        assert!(
            readme.contains(&format!("| `{key}` |")),
            "README's config table lacks `{key}`"
        );
    }
}

#[test]
fn shipped_example_config_is_valid() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["proxy", "--check-config", "--config"])
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/tollgate.toml"
        ))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
