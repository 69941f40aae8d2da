//! Documentation stays in step with the code: the README's config table
//! has exactly the code's keys (with their types and defaults), and every
//! shipped example config is valid.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

/// The (key, type, default) cells of the first config table after the
/// README's `heading`, in order; the default without its backticks.
fn readme_config_table(heading: &str) -> Vec<(String, String, String)> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let rows: Vec<(String, String, String)> = readme
        .lines()
        .skip_while(|l| l.trim() != heading)
        .skip_while(|l| l.trim() != "| key | type | default | meaning |")
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let cells: Vec<&str> = l.split(" | ").collect();
            let key = cells[0].trim_start_matches("| ").trim_matches('`');
            let default = cells[2]
                .strip_prefix('`')
                .and_then(|d| d.strip_suffix('`'))
                .unwrap_or(cells[2]);
            (key.to_string(), cells[1].to_string(), default.to_string())
        })
        .collect();
    assert!(!rows.is_empty(), "README has no config table");
    rows
}

#[test]
fn readme_config_table_matches_the_code() {
    same_keys(
        &readme_config_table("## Configuration"),
        tollgate::config::keys().collect(),
    );
}

#[test]
fn readme_control_config_table_matches_the_code() {
    same_keys(
        &readme_config_table("## Control endpoint"),
        tollgate::config::control::keys().collect(),
    );
}

#[test]
fn readme_inject_config_table_matches_the_code() {
    same_keys(
        &readme_config_table("## Sidecar injector"),
        tollgate::config::inject::keys().collect(),
    );
}

fn same_keys(table: &[(String, String, String)], keys: Vec<&tollgate::config::Key>) {
    for k in &keys {
        let row = table.iter().find(|(key, ..)| key == k.key);
        let Some((_, ty, default)) = row else {
            panic!("README's config table lacks `{}`", k.key);
        };
        assert_eq!(
            ty,
            k.ty.name(),
            "type of `{}` in README's config table",
            k.key
        );
        assert_eq!(
            default, k.default,
            "default of `{}` in README's config table",
            k.key
        );
    }
    for (key, ..) in table {
        assert!(
            keys.iter().any(|k| k.key == key),
            "README's config table has `{key}`, which is not a config key"
        );
    }
    let code: Vec<&str> = keys.iter().map(|k| k.key).collect();
    let readme: Vec<&str> = table.iter().map(|(k, ..)| k.as_str()).collect();
    assert_eq!(
        readme, code,
        "README's config table is not in the code's order"
    );
}

/// `tollgate <subcommand> --check-config --config examples/<file>` passes.
fn example_is_valid(subcommand: &str, file: &str, env: &[(&str, &str)]) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args([subcommand, "--check-config", "--config"])
        .arg(format!("{}/examples/{file}", env!("CARGO_MANIFEST_DIR")))
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{file}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn shipped_example_config_is_valid() {
    example_is_valid("proxy", "tollgate.toml", &[]);
}

#[test]
fn shipped_gateway_example_config_is_valid() {
    example_is_valid("proxy", "gateway/tollgate.toml", &[]);
}

#[test]
fn shipped_example_control_config_is_valid() {
    example_is_valid(
        "control",
        "control.toml",
        &[(
            "TOLLGATE_ADMIN_TOKEN",
            "tga_an-example-token-of-enough-length",
        )],
    );
}

#[test]
fn shipped_example_inject_config_is_valid() {
    example_is_valid("inject", "inject.toml", &[]);
}
