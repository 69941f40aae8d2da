//! Tests of `[providers.<name>]`: defaults, keys, base URLs, CA files.

use std::io::Write as _;

use super::super::testing::{env, ok, problems};
use super::super::{parse_str, Flags, Sources};
use super::*;

#[test]
fn default_provider_resolution() {
    // Saying so on openrouter is enough: the built-in openai default is implicit.
    let c = ok("[providers.openrouter]\ndefault = true\n", &[]);
    assert_eq!(
        c.default_provider(Dialect::OpenAi).unwrap().name,
        "openrouter"
    );
    assert!(!c.provider("openai").unwrap().default);
    // Two explicit defaults of one dialect: a problem.
    assert_eq!(
        problems("[providers.openrouter]\ndefault = true\n[providers.openai]\ndefault = true\n", &[]),
        ["providers.openrouter.default: openai is already the default openai provider; only one may set default = true"]
    );
    // The only enabled provider of a dialect is its default.
    let c = ok("[providers.openai]\nenabled = false\n", &[]);
    assert!(c.provider("openai").is_none());
    assert_eq!(
        c.default_provider(Dialect::OpenAi).unwrap().name,
        "openrouter"
    );
    // A second anthropic-dialect provider: anthropic stays the default.
    let extra = "[providers.bedrockish]\ndialect = \"anthropic\"\nbase_url = \"https://llm.internal/anthropic\"\n";
    let c = ok(extra, &[]);
    assert_eq!(
        c.default_provider(Dialect::Anthropic).unwrap().name,
        "anthropic"
    );
    assert_eq!(
        c.provider("bedrockish").unwrap().upstream.base_path,
        "/anthropic"
    );
    // ...unless it says otherwise.
    let c = ok(&format!("{extra}default = true\n"), &[]);
    assert_eq!(
        c.default_provider(Dialect::Anthropic).unwrap().name,
        "bedrockish"
    );
    // Opting out leaves a dialect without a default.
    let c = ok("[providers.anthropic]\ndefault = false\n", &[]);
    assert!(c.default_provider(Dialect::Anthropic).is_none());
    let c = ok("[providers.openai]\ndefault = false\n", &[]);
    assert!(c.default_provider(Dialect::OpenAi).is_none());
    // Disabled providers are gone, even with bad fields.
    let c = ok(
        "[providers.anthropic]\nenabled = false\nbase_url = \"nope\"\n",
        &[],
    );
    assert!(c.provider("anthropic").is_none());
    assert!(c.default_provider(Dialect::Anthropic).is_none());
}

#[test]
fn new_providers_need_dialect_and_base_url() {
    assert_eq!(
        problems("[providers.x]\ndefault = true\n", &[]),
        [
            "providers.x.dialect: missing (\"anthropic\" or \"openai\")",
            "providers.x.base_url: missing"
        ]
    );
}

#[test]
fn base_urls() {
    let u = parse_base_url("https://openrouter.ai/api/v1/").unwrap();
    assert_eq!(
        (u.tls, u.host.as_str(), u.port, u.base_path.as_str()),
        (true, "openrouter.ai", 443, "/api/v1")
    );
    let u = parse_base_url("HTTP://LocalHost:80/").unwrap();
    assert_eq!(
        (u.tls, u.host.as_str(), u.port, u.base_path.as_str()),
        (false, "localhost", 80, "")
    );
    assert_eq!(u.authority(), "localhost");
    let u = parse_base_url("https://[::1]:8443/v1").unwrap();
    assert_eq!((u.host.as_str(), u.port), ("::1", 8443));
    assert_eq!(u.authority(), "[::1]:8443");
    assert_eq!(parse_base_url("https://h:443").unwrap().authority(), "h");
    assert_eq!(parse_base_url("http://h:443").unwrap().authority(), "h:443");
    for bad in [
        "api.anthropic.com",
        "ftp://h",
        "https://",
        "https:///v1",
        "https://h:0",
        "https://h:99999",
        "https://h:x",
        "https://u:p@h",
        "https://h/v1#f",
        "https://h/v1?q",
        "https://h o",
        "https://[::1",
        "https://[zz]:1",
        "https://h%41",
    ] {
        assert!(parse_base_url(bad).is_err(), "{bad}");
    }
}

#[test]
fn api_key_env_is_read_from_the_env_map() {
    let c = ok(
        "[providers.openrouter]\napi_key_env = \"MY_OR_KEY\"\n",
        &[
            ("ANTHROPIC_API_KEY", "sk-ant-123\n"),
            ("MY_OR_KEY", "sk-or-456"),
            ("OPENAI_API_KEY", ""),
        ],
    );
    assert_eq!(
        c.provider("anthropic")
            .unwrap()
            .api_key
            .as_ref()
            .unwrap()
            .expose(),
        "sk-ant-123"
    );
    assert_eq!(
        c.provider("openrouter")
            .unwrap()
            .api_key
            .as_ref()
            .unwrap()
            .expose(),
        "sk-or-456"
    );
    // Empty = no key configured: pass the client's credential through.
    assert_eq!(c.provider("openai").unwrap().api_key, None);
}

#[test]
fn api_key_file_is_read_trimmed_and_replaces_the_builtin_env() {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    writeln!(f, "  sk-ant-from-file  ").unwrap();
    let path = f.path().display().to_string();
    let toml = format!("[providers.anthropic]\napi_key_file = {path:?}\n");
    let c = ok(&toml, &[("ANTHROPIC_API_KEY", "sk-ant-env")]);
    assert_eq!(
        c.provider("anthropic")
            .unwrap()
            .api_key
            .as_ref()
            .unwrap()
            .expose(),
        "sk-ant-from-file"
    );
    // The env layer can switch back to a variable.
    let c = ok(
        &toml,
        &[
            ("TOLLGATE_PROVIDERS__ANTHROPIC__API_KEY_ENV", "K"),
            ("K", "sk-k"),
        ],
    );
    assert_eq!(
        c.provider("anthropic")
            .unwrap()
            .api_key
            .as_ref()
            .unwrap()
            .expose(),
        "sk-k"
    );
}

#[test]
fn api_key_file_problems() {
    let got = problems(
        "[providers.anthropic]\napi_key_file = \"/no/such/key\"\n[providers.openai]\napi_key_env = \"X\"\napi_key_file = \"/k\"\n",
        &[],
    );
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(
        got[0].starts_with("providers.anthropic.api_key_file: cannot read \"/no/such/key\": "),
        "{got:?}"
    );
    assert_eq!(
        got[1],
        "providers.openai.api_key_file: set only one of api_key_env and api_key_file"
    );
    let empty = tempfile::NamedTempFile::new().unwrap();
    let got = problems(
        &format!(
            "[providers.anthropic]\napi_key_file = {:?}\n",
            empty.path().display().to_string()
        ),
        &[],
    );
    assert_eq!(got.len(), 1);
    assert!(got[0].ends_with("is empty"), "{got:?}");
}

#[test]
fn ca_file_problems() {
    let got = problems(
        "[providers.anthropic]\nca_file = \"/no/such/ca.pem\"\n",
        &[],
    );
    assert_eq!(got.len(), 1);
    assert!(
        got[0].starts_with("providers.anthropic.ca_file: cannot load"),
        "{got:?}"
    );
    let not_pem = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(not_pem.path(), "hello").unwrap();
    let got = problems(
        &format!(
            "[providers.anthropic]\nca_file = {:?}\n",
            not_pem.path().display().to_string()
        ),
        &[],
    );
    assert_eq!(got.len(), 1);
    assert!(
        got[0].starts_with("providers.anthropic.ca_file: no certificate"),
        "{got:?}"
    );
}

#[test]
fn secrets_never_show() {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    write!(f, "sk-file-SECRET").unwrap();
    let toml = format!(
        "[providers.openrouter]\napi_key_file = {:?}\n[providers.openai]\napi_key_env = \"OPENAI_API_KEY\"\n",
        f.path().display().to_string()
    );
    let vars = env(&[
        ("ANTHROPIC_API_KEY", "sk-env-SECRET"),
        ("OPENAI_API_KEY", "sk-oai-SECRET"),
    ]);
    let c = parse_str(&toml, &vars, &Flags::default()).unwrap();
    assert!(c.providers.iter().all(|p| p.api_key.is_some()));
    assert!(!format!("{c:?}").contains("SECRET"));
    assert!(!format!("{c:#?}").contains("SECRET"));
    let src = Sources {
        file: None,
        env: vars.clone(),
        flags: Flags::default(),
    };
    assert!(!format!("{src:?}").contains("SECRET"));
    // A broken config with keys configured: no problem shows a key.
    let bad = format!("listen = \"x\"\n{toml}[providers.anthropic]\napi_key_env = \"ANTHROPIC_API_KEY\"\nnope = 1\n");
    let e = parse_str(&bad, &vars, &Flags::default()).unwrap_err();
    assert!(!e.to_string().contains("SECRET"));
    assert!(!format!("{e:?}").contains("SECRET"));
    // Nor when the secret sits in an env var under an unknown key.
    let vars = env(&[("TOLLGATE_PROVIDERS__ANTHROPIC__API_KEY", "sk-env-SECRET")]);
    let e = parse_str("", &vars, &Flags::default()).unwrap_err();
    assert!(!format!("{e} {e:?}").contains("SECRET"));
}
