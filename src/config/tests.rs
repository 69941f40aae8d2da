//! Tests across sections: defaults, layering and provenance, the key check,
//! and the key rows against the code.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use toml::{Table, Value};

use super::schema::pattern_matches;
use super::testing::{env, ok, problems};
use super::*;
use crate::meter::money;
use crate::meter::prices;

#[test]
fn defaults_without_file_or_env() {
    let c = load(&Sources::default()).unwrap();
    assert_eq!(c.listen, "127.0.0.1:8787".parse().unwrap());
    assert_eq!(c.admin_listen, Some("127.0.0.1:9464".parse().unwrap()));
    assert_eq!(c.data_dir, PathBuf::from("tollgate-data"));
    assert_eq!(c.max_body_bytes, 33_554_432);
    assert_eq!(c.default_account, "default");
    assert_eq!(c.sidecar_id, "tollgate");
    assert!(c.stream_receipt);
    assert!(c.threads >= 1);
    assert_eq!(c.shutdown_grace, Duration::from_secs(10));
    assert_eq!(
        c.timeouts,
        Timeouts {
            connect: Duration::from_secs(5),
            first_byte: Duration::from_secs(600),
            idle: Duration::from_secs(300),
            handshake: Duration::from_secs(10),
            request_head: Duration::from_secs(10),
            request_body: Duration::from_secs(30),
        }
    );
    assert_eq!(c.forward_proxy, None);
    assert_eq!(
        c.provider("anthropic").unwrap().hosts,
        ["api.anthropic.com"]
    );
    assert_eq!(c.provider("openrouter").unwrap().hosts, ["openrouter.ai"]);
    assert_eq!(c.outbox.retention, Duration::from_secs(30 * 86_400));
    let names: Vec<&str> = c.providers.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["anthropic", "openai", "openrouter"]);
    let a = c.provider("anthropic").unwrap();
    assert_eq!(a.dialect, Dialect::Anthropic);
    assert_eq!(
        a.upstream,
        Upstream {
            tls: true,
            host: "api.anthropic.com".into(),
            port: 443,
            base_path: String::new(),
            ca_file: None,
        }
    );
    assert_eq!(a.api_key, None);
    assert_eq!(c.provider("openai").unwrap().upstream.base_path, "/v1");
    assert_eq!(
        c.provider("openrouter").unwrap().upstream.base_path,
        "/api/v1"
    );
    assert_eq!(
        c.provider("openrouter").unwrap().upstream.authority(),
        "openrouter.ai"
    );
    assert_eq!(
        c.default_provider(Dialect::Anthropic).unwrap().name,
        "anthropic"
    );
    assert_eq!(c.default_provider(Dialect::OpenAi).unwrap().name, "openai");
    assert!(!c.provider("openrouter").unwrap().default);
    assert_eq!(c.prices, PriceTable::builtin());
}

#[test]
fn precedence_flag_over_env_over_file() {
    let file = "listen = \"127.0.0.1:1001\"\ndata_dir = \"from-file\"\nadmin_listen = \"127.0.0.1:1002\"\n";
    let vars = env(&[
        ("TOLLGATE_LISTEN", "127.0.0.1:2001"),
        ("TOLLGATE_DATA_DIR", "from-env"),
    ]);
    let c = parse_str(file, &vars, &Flags::default()).unwrap();
    assert_eq!(c.listen.port(), 2001);
    assert_eq!(c.data_dir, PathBuf::from("from-env"));
    assert_eq!(c.admin_listen.unwrap().port(), 1002);
    let flags = Flags {
        listen: Some("127.0.0.1:3001".into()),
        admin_listen: Some(String::new()),
        data_dir: None,
    };
    let c = parse_str(file, &vars, &flags).unwrap();
    assert_eq!(c.listen.port(), 3001);
    assert_eq!(c.admin_listen, None);
    assert_eq!(c.data_dir, PathBuf::from("from-env"));
}

#[test]
fn env_nests_with_double_underscores() {
    let c = ok(
        "",
        &[
            (
                "TOLLGATE_PROVIDERS__ANTHROPIC__BASE_URL",
                "http://127.0.0.1:9999",
            ),
            ("TOLLGATE_TIMEOUTS__CONNECT", "250ms"),
            ("TOLLGATE_MAX_BODY_BYTES", "1000"),
            ("TOLLGATE_THREADS", "3"),
            ("TOLLGATE_STREAM_RECEIPT", "false"),
            ("TOLLGATE_DEFAULT_ACCOUNT", "123"),
            ("TOLLGATE_CONFIG", "/not/a/key.toml"),
            ("TOLLGATE_LOG", "debug"),
            ("OTHER_VAR", "ignored"),
        ],
    );
    let a = c.provider("anthropic").unwrap();
    assert_eq!(
        a.upstream,
        Upstream {
            tls: false,
            host: "127.0.0.1".into(),
            port: 9999,
            base_path: String::new(),
            ca_file: None,
        }
    );
    assert_eq!(a.upstream.authority(), "127.0.0.1:9999");
    assert_eq!(a.dialect, Dialect::Anthropic);
    assert_eq!(c.timeouts.connect, Duration::from_millis(250));
    assert_eq!(c.max_body_bytes, 1000);
    assert_eq!(c.threads, 3);
    assert!(!c.stream_receipt);
    assert_eq!(c.default_account, "123");
}

#[test]
fn env_can_add_a_provider_and_set_a_quoted_empty_string() {
    let c = ok(
        "",
        &[
            ("TOLLGATE_PROVIDERS__LOCAL__DIALECT", "openai"),
            (
                "TOLLGATE_PROVIDERS__LOCAL__BASE_URL",
                "http://localhost:8000/v1/",
            ),
            ("TOLLGATE_ADMIN_LISTEN", "\"\""),
        ],
    );
    let local = c.provider("local").unwrap();
    assert_eq!(local.upstream.base_path, "/v1");
    assert_eq!(local.upstream.authority(), "localhost:8000");
    assert_eq!(c.admin_listen, None);
}

#[test]
fn every_problem_is_reported_together() {
    let file = r#"
listen = "nowhere"
admin_listen = "1.2.3.4"
max_body_bytes = 0
default_account = ""
threads = 5000
shutdown_grace = "soon"
forward_proxy_listen = "127.0.0.1:8788"

[timeouts]
connect = "0s"
idle = 5

[outbox]
retention = "forever"

[providers.anthropic]
base_ur = "https://x"

[providers.openai]
base_url = "ftp://api.openai.com"

[providers.Bad_Name]
dialect = "grpc"
base_url = "https://h?x=1"

[prices."gpt-4o"]
output = "abc"

[cache]
mode = "some"
"#;
    let got = problems(file, &[]);
    let expected = [
        "providers.anthropic.base_ur: unknown key",
        "timeouts.idle: expected a string, found integer",
        "listen: not a socket address: \"nowhere\" (expected ip:port, e.g. 127.0.0.1:8787)",
        "admin_listen: not a socket address: \"1.2.3.4\" (expected ip:port, e.g. 127.0.0.1:8787)",
        "max_body_bytes: must be greater than 0",
        "default_account: must not be empty",
        "threads: must be between 0 and 1024 (0 = one per CPU), not 5000",
        "shutdown_grace: not a duration: \"soon\" (expected e.g. \"500ms\", \"10s\", \"5m\", \"30d\")",
        "timeouts.connect: must be greater than 0",
        "outbox.retention: not a duration: \"forever\" (expected e.g. \"500ms\", \"10s\", \"5m\", \"30d\")",
        "providers.Bad_Name: provider names use only a-z, 0-9, '_' and '-'",
        "providers.Bad_Name.dialect: unknown dialect \"grpc\" (expected \"anthropic\" or \"openai\")",
        "providers.Bad_Name.base_url: must not have a query or fragment: \"https://h?x=1\"",
        "providers.openai.base_url: not an http(s) URL: \"ftp://api.openai.com\" (the scheme must be http or https)",
        "prices.\"gpt-4o\".output: not a decimal USD amount: \"abc\"",
        "cache.mode: \"some\" is not all or off",
    ];
    assert_eq!(got, expected);
    // Display: one per line.
    let e = parse_str(file, &BTreeMap::new(), &Flags::default()).unwrap_err();
    assert_eq!(e.to_string().lines().count(), expected.len());
}

#[test]
fn unknown_nested_keys_and_wrong_shapes() {
    let got = problems(
        "timeouts = 5\n[providers.anthropic]\nbase_ur = \"x\"\n[prices.\"gpt-4.1\"]\ninptu = \"1\"\n[outbox.deeper]\nx = 1\n",
        &[],
    );
    assert_eq!(
        got,
        [
            "outbox.deeper: unknown key",
            "prices.\"gpt-4.1\".inptu: unknown key",
            "providers.anthropic.base_ur: unknown key",
            "timeouts: expected a table, found integer",
        ]
    );
}

#[test]
fn problems_name_the_env_var_or_flag() {
    let vars = env(&[
        ("TOLLGATE_PROVIDERS__ANTHROPIC__BASE_URL", "nope"),
        ("TOLLGATE_LISTEN", "bad"),
        ("TOLLGATE_NOT_A_KEY", "1"),
        ("TOLLGATE_PROVIDERS____X", "1"),
    ]);
    let flags = Flags {
        data_dir: Some(String::new()),
        ..Flags::default()
    };
    let e = parse_str("", &vars, &flags).unwrap_err();
    let got: Vec<String> = e.problems.iter().map(ToString::to_string).collect();
    assert_eq!(
        got,
        [
            "env TOLLGATE_PROVIDERS____X: not a config variable name (TOLLGATE_KEY, with __ between nested keys)",
            "not_a_key (from env TOLLGATE_NOT_A_KEY): unknown key",
            "listen (from env TOLLGATE_LISTEN): not a socket address: \"bad\" (expected ip:port, e.g. 127.0.0.1:8787)",
            "data_dir (from flag --data-dir): must not be empty",
            "providers.anthropic.base_url (from env TOLLGATE_PROVIDERS__ANTHROPIC__BASE_URL): not an http(s) URL: \"nope\" (the scheme must be http or https)",
        ]
    );
}

#[test]
fn conflicting_env_vars_are_a_problem() {
    assert_eq!(
        problems(
            "",
            &[("TOLLGATE_TIMEOUTS", "5"), ("TOLLGATE_TIMEOUTS__CONNECT", "1s")]
        ),
        [
            "timeouts.connect (from env TOLLGATE_TIMEOUTS__CONNECT): conflicts with another TOLLGATE_ variable that sets a value above this key",
            "timeouts (from env TOLLGATE_TIMEOUTS): expected a table, found integer",
        ]
    );
}

#[test]
fn cost_controls_validate_and_report_by_element() {
    let c = ok(
        r#"
[[gateway_keys]]
account = "acme"
sha256 = "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD"
rpm = 5
[[budgets]]
name = "acme-day"
scope = "account:acme"
period = "day"
limit_usd = "2.5"
soft_thresholds = [0.8, 0.5]
"#,
        &[],
    );
    assert!(c.gateway_keys.enabled());
    assert_eq!(c.rate_limits.len(), 1, "the key's own rpm is a rule");
    assert_eq!(c.rate_limits[0].label(), "key:ba7816bf8f01");
    assert_eq!(c.budgets[0].limit_nusd, 2_500_000_000);
    assert_eq!(c.budgets[0].soft_thresholds, vec![0.5, 0.8]);
    assert_eq!(c.budget_default_max_tokens, 4096);
    let got = problems(
        r#"
gateway_keys_mode = "prod"
[[gateway_keys]]
account = "acme"
sha256 = "tg_live_abc"
[[rate_limits]]
scope = "team:x"
rpm = 0
[[budgets]]
name = "b"
scope = "account:*"
period = "week"
limit_usd = "-1"
soft_thresholds = [1.5]
alert_webhook = "ftp://x"
on_insufficient = "maybe"
[[budgets]]
nmae = "typo"
"#,
        &[],
    );
    assert_eq!(
        got,
        [
            "budgets[1].nmae: unknown key",
            "gateway_keys_mode: \"prod\" is not live, test or any",
            "gateway_keys[0].sha256: must be 64 hex digits (the SHA-256 printed by `tollgate keys new`), not a key",
            "rate_limits[0].scope: \"team:x\" is not a scope (expected all, account:NAME, account:*, workload:NAME, workload:* or tag:KEY=VALUE)",
            "rate_limits[0].rpm: must be at least 1, not 0",
            "budgets[0].scope: account: \"*\" is not a valid name (1-128 of A-Z a-z 0-9 . _ - : / @)",
            "budgets[0].period: \"week\" is not request, day or month",
            "budgets[0].limit_usd: negative amount: \"-1\"",
            "budgets[0].soft_thresholds: 1.5 is not a fraction above 0 and at most 1",
            "budgets[0].alert_webhook: \"ftp://x\" is not an http(s) URL",
            "budgets[0].on_insufficient: \"maybe\" is not deny or clamp",
            "budgets[1].name: required",
            "budgets[1].scope: required",
            "budgets[1].period: required",
            "budgets[1].limit_usd: required",
        ]
    );
    // Arrays of tables come from the file only.
    let got = problems("", &[("TOLLGATE_BUDGETS__NAME", "x")]);
    assert_eq!(got, ["budgets (from env TOLLGATE_BUDGETS__NAME): expected an array of tables ([[budgets]] in the config file), found table"]);
}

#[test]
fn load_reads_the_named_file_or_reports_it() {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    writeln!(f, "listen = \"127.0.0.1:4000\"").unwrap();
    let src = Sources {
        file: Some(f.path().to_owned()),
        ..Sources::default()
    };
    assert_eq!(load(&src).unwrap().listen.port(), 4000);
    let src = Sources {
        file: Some(PathBuf::from("/no/such/tollgate.toml")),
        env: env(&[("TOLLGATE_LISTEN", "bad")]),
        flags: Flags::default(),
    };
    let e = load(&src).unwrap_err();
    assert_eq!(e.problems.len(), 2, "{e}");
    assert!(e.problems[0]
        .to_string()
        .starts_with("/no/such/tollgate.toml: cannot read the config file: "));
    assert!(e.problems[1]
        .key
        .starts_with("listen (from env TOLLGATE_LISTEN)"));
    let e = parse_str("listen = ", &BTreeMap::new(), &Flags::default()).unwrap_err();
    assert_eq!(e.problems.len(), 1);
    assert!(e.problems[0]
        .to_string()
        .starts_with("<config>: not valid TOML: "));
}

#[test]
fn keys_table_is_complete_and_consistent() {
    let mut seen = std::collections::BTreeSet::new();
    for k in keys() {
        assert!(seen.insert(k.key), "duplicate {}", k.key);
        assert!(!k.default.is_empty() && !k.meaning.is_empty(), "{}", k.key);
    }
    // Every field of the raw types is a key (a field missing from the rows
    // would be rejected as unknown, so accepting all of them proves it).
    let all = r#"
listen = "127.0.0.1:1"
forward_proxy_listen = ""
ca_dir = "ca"
tunnel_policy = "allow"
forward_proxy_auth_sha256 = ""
admin_listen = ""
data_dir = "d"
max_body_bytes = 1
default_account = "a"
default_workload = "w"
default_tags = "k=v"
sidecar_id = "s"
stream_receipt = true
threads = 1
shutdown_grace = "1s"
idempotency_ttl = "1h"
idempotency_wait = "1s"
gateway_keys_mode = "any"
budget_default_max_tokens = 100
control_url = "https://control.example.com:8790/"
control_credential_env = "C"
control_credential_file = ""
lease_wait = "50ms"
prices_file = ""
[ship]
batch = 10
interval = "2s"
max_backoff = "5s"
max_outbox_events = 100
[[gateway_keys]]
account = "a"
sha256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
name = "k"
rpm = 1
tpm = 1
[[rate_limits]]
scope = "account:*"
rpm = 1
tpm = 1
[[budgets]]
name = "b"
scope = "tag:team=search"
period = "day"
limit_usd = "1.50"
soft_thresholds = [0.5, 1]
alert_webhook = "https://hooks.example.com/x?y=1"
on_insufficient = "clamp"
[timeouts]
connect = "1s"
first_byte = "1s"
idle = "1s"
handshake = "1s"
request_head = "1s"
request_body = "1s"
[outbox]
retention = "1s"
sync = true
[batches]
poll_interval = "1s"
max_body_bytes = "1MiB"
retention = "30d"
[providers.p]
dialect = "openai"
base_url = "http://h"
api_key_env = "E"
default = true
enabled = true
[providers.q]
dialect = "anthropic"
base_url = "http://h"
api_key_file = ""
ca_file = ""
hosts = ["q.example.com"]
[prices.m]
input = "1"
output = "1"
cache_write_5m = "1"
cache_write_1h = "1"
cache_read = "1"
batch_multiplier = "1"
[price_fallback]
input = "1"
output = "1"
cache_write_5m = "1"
cache_write_1h = "1"
cache_read = "1"
batch_multiplier = "1"
[cache]
mode = "all"
ttl = "1h"
max_bytes = "1GiB"
max_entry_bytes = "8MiB"
coalesce = true
coalesce_wait = "600s"
[[cache.rules]]
scope = "model:m"
mode = "off"
ttl = "1m"
[aliases.x]
targets = ["p/m"]
policy = "cheapest"
[aliases.x.overrides."p/m"]
max_tokens = 1
[routing]
default_alias = "x"
max_attempts = 1
deadline = "1s"
backoff_base = "1s"
backoff_max = "1s"
breaker_failures = 1
breaker_window = "1s"
breaker_open_for = "1s"
breaker_probes = 1
fallback_on_client_errors = true
header_targets = ["*"]
[routing.accounts.a]
header_targets = ["q/*"]
"#;
    let c = ok(all, &[("C", "tgs_abc")]);
    let link = c.control.unwrap();
    assert_eq!(link.url, "https://control.example.com:8790");
    assert_eq!(link.credential.expose(), "tgs_abc");
    assert_eq!(link.ship.batch, 10);
    assert_eq!(link.ship.max_outbox_events, 100);
    fn leaves(
        t: &Table,
        path: &mut Vec<String>,
        out: &mut std::collections::BTreeSet<&'static str>,
    ) {
        for (k, v) in t {
            path.push(k.clone());
            match v {
                Value::Table(inner) => leaves(inner, path, out),
                Value::Array(items) if items.iter().all(Value::is_table) => {
                    let name = path.pop().unwrap();
                    for (i, item) in items.iter().enumerate() {
                        path.push(format!("{name}[{i}]"));
                        leaves(item.as_table().unwrap(), path, out);
                        path.pop();
                    }
                    path.push(name);
                }
                _ => {
                    let key = keys()
                        .find(|e| pattern_matches(e.key, path, false))
                        .unwrap();
                    out.insert(key.key);
                }
            }
            path.pop();
        }
    }
    let mut covered = std::collections::BTreeSet::new();
    leaves(&toml::from_str(all).unwrap(), &mut Vec::new(), &mut covered);
    assert_eq!(covered, seen);
    // Defaults in the table match the code.
    let default_of = |k: &str| keys().find(|e| e.key == k).map(|e| e.default).unwrap();
    let c = load(&Sources::default()).unwrap();
    assert_eq!(
        default_of("listen").parse::<SocketAddr>().unwrap(),
        c.listen
    );
    assert_eq!(
        default_of("admin_listen").parse::<SocketAddr>().ok(),
        c.admin_listen
    );
    assert_eq!(PathBuf::from(default_of("data_dir")), c.data_dir);
    assert_eq!(
        default_of("max_body_bytes").parse::<usize>().unwrap(),
        c.max_body_bytes
    );
    assert_eq!(default_of("default_account"), c.default_account);
    assert_eq!(
        default_of("stream_receipt").parse::<bool>().unwrap(),
        c.stream_receipt
    );
    assert_eq!(default_of("threads"), "0");
    for (k, n) in [
        ("routing.max_attempts", c.routing.max_attempts),
        ("routing.breaker_failures", c.routing.breaker.failures),
        ("routing.breaker_probes", c.routing.breaker.probes),
    ] {
        assert_eq!(default_of(k).parse::<u32>().unwrap(), n, "{k}");
    }
    for (k, d) in [
        ("shutdown_grace", c.shutdown_grace),
        ("idempotency_ttl", c.idempotency_ttl),
        ("idempotency_wait", c.idempotency_wait),
        ("timeouts.connect", c.timeouts.connect),
        ("timeouts.first_byte", c.timeouts.first_byte),
        ("timeouts.idle", c.timeouts.idle),
        ("timeouts.request_head", c.timeouts.request_head),
        ("timeouts.request_body", c.timeouts.request_body),
        ("outbox.retention", c.outbox.retention),
        ("routing.deadline", c.routing.deadline),
        ("routing.backoff_base", c.routing.backoff_base),
        ("routing.backoff_max", c.routing.backoff_max),
        ("routing.breaker_window", c.routing.breaker.window),
        ("routing.breaker_open_for", c.routing.breaker.open_for),
    ] {
        assert_eq!(humantime::parse_duration(default_of(k)).unwrap(), d, "{k}");
    }
    let fb = prices::fallback_default();
    for (k, v) in [
        ("price_fallback.input", fb.rates.input),
        ("price_fallback.output", fb.rates.output),
        ("price_fallback.cache_write_5m", fb.rates.cache_write_5m),
        ("price_fallback.cache_write_1h", fb.rates.cache_write_1h),
        ("price_fallback.cache_read", fb.rates.cache_read),
    ] {
        assert_eq!(money::format_usd(v), default_of(k), "{k}");
    }
    assert_eq!(
        u64::from(fb.batch_multiplier_ppm) * 1_000,
        money::parse_usd(default_of("price_fallback.batch_multiplier")).unwrap()
    );
}

#[test]
fn control_link_problems() {
    let err = |toml: &str, vars: &[(&str, &str)]| problems(toml, vars).join("\n");
    let e = err("control_url = \"ftp://x\"\n[ship]\nbatch = 0\n", &[]);
    assert!(e.contains("ship.batch: must be at least 1"), "{e}");
    let e = err("control_url = \"ftp://x\"\n", &[]);
    assert!(e.contains("control_url: not an http(s) URL"), "{e}");
    let e = err("control_url = \"http://c:1\"\n", &[]);
    assert!(
        e.contains("needs this sidecar's credential (tgs_…) in TOLLGATE_CONTROL_CREDENTIAL"),
        "{e}"
    );
    assert!(!e.contains("tgs_x"));
    let c = ok(
        "control_url = \"http://c:1\"\n",
        &[("TOLLGATE_CONTROL_CREDENTIAL", "tgs_x")],
    );
    assert_eq!(
        c.control.unwrap().ship.interval,
        std::time::Duration::from_secs(1)
    );
    // The control endpoint's own variables are not the sidecar's keys.
    ok(
        "",
        &[
            ("TOLLGATE_CONTROL_LISTEN", "0.0.0.0:1"),
            ("TOLLGATE_MASTER_KEY", "x"),
        ],
    );
}
