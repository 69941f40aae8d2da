//! `[aliases]` and `[routing]` through the real binary: `--check-config`
//! lists every routing problem with its key and exits 64, and an
//! environment variable can repair one.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

const BAD: &str = r#"
[aliases.smart]
policy = "cheapest"
targets = ["anthropic/claude-sonnet-4-5", "mistral/large", "openai/my-finetune"]
[aliases.smart.overrides."openai/gpt-5"]
max_tokens = 100
[routing]
default_alias = "smarter"
max_attempts = 0
header_targets = ["anthropic"]
"#;

fn check(config: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routing.toml");
    std::fs::write(&path, config).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["proxy", "--check-config", "--config"])
        .arg(&path)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_names_every_routing_problem() {
    let (code, err) = check(BAD, &[]);
    assert_eq!(code, Some(64), "{err}");
    for needle in [
        "aliases.smart.targets: \"mistral/large\": \"mistral\" is not a configured provider",
        "aliases.smart.targets: policy cheapest needs a price for \"openai/my-finetune\"",
        "aliases.smart.overrides.\"openai/gpt-5\": \"openai/gpt-5\" is not one of the alias's targets",
        "routing.default_alias: \"smarter\" is not an alias",
        "routing.max_attempts: must be between 1 and 1000, not 0",
        "routing.header_targets: \"anthropic\" is not a provider/model target",
    ] {
        assert!(err.contains(needle), "{needle} missing from:\n{err}");
    }
}

#[test]
fn a_good_routing_config_passes_and_env_overrides_it() {
    let good = "[aliases.smart]\ntargets = [\"anthropic/claude-sonnet-4-5\", \"openrouter/openai/gpt-5\"]\n[routing]\ndefault_alias = \"smart\"\n";
    let (code, err) = check(good, &[]);
    assert_eq!(code, Some(0), "{err}");
    let (code, err) = check(good, &[("TOLLGATE_ROUTING__MAX_ATTEMPTS", "0")]);
    assert_eq!(code, Some(64), "{err}");
    assert!(
        err.contains("routing.max_attempts (from env TOLLGATE_ROUTING__MAX_ATTEMPTS)"),
        "{err}"
    );
}
