//! The control endpoint through its real binary: `tollgate control` on an
//! ephemeral port, driven by `tollgate admin` and plain HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeSet;
use std::process::Command;

use reqwest::Method;
use serde_json::{json, Value};
use support::control::{Control, ADMIN_TOKEN};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// The OpenAPI document and the router's table list the same routes, and
/// every documented route answers (401 without a credential where the
/// document says it needs one, 2xx where it says it does not): none is a
/// 404 or 405.
#[tokio::test]
async fn openapi_document_matches_the_routes() {
    let doc: Value = serde_json::from_str(tollgate::control::api::OPENAPI).unwrap();
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(move |m| (m.to_uppercase(), path.clone()))
        })
        .collect();
    let routed: BTreeSet<(String, String)> = tollgate::control::api::routes()
        .into_iter()
        .map(|(m, p, _)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(documented, routed, "openapi.json and api::routes() differ");

    let control = Control::start("");
    let (status, served) = control
        .call(Method::GET, "/api/v1/openapi.json", None, None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(served, doc);
    for (method, path) in &documented {
        let op = &doc["paths"][path][method.to_lowercase()];
        let public = op["security"] == json!([]);
        let concrete = path
            .replace("{account}", "acme")
            .replace("{id}", "gk_0000000000000000");
        let (status, body) = control
            .call(method.parse().unwrap(), &concrete, None, None)
            .await;
        if public {
            assert!((200..300).contains(&status), "{method} {path}: {status}");
        } else {
            assert_eq!(status, 401, "{method} {path}: {body}");
            assert_eq!(body["error"]["type"], "unauthorized");
        }
    }
    let (status, body) = control.call(Method::GET, "/api/v1/nope", None, None).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["type"], "not_found");
}

/// Accounts, plan limits, gateway keys, sidecar credentials and the audit
/// log, through `tollgate admin`.
#[tokio::test]
async fn admin_cli_manages_accounts_keys_and_sidecars_with_an_audit_trail() {
    let control = Control::start("");
    let acme = control.admin_json(&["accounts", "create", "acme"]);
    assert_eq!(acme["plan"], "trial");
    assert_eq!(acme["gateway_keys"], 0);
    let dup = control.admin(ADMIN_TOKEN, &["accounts", "create", "acme"]);
    assert!(!dup.status.success());
    assert!(stderr(&dup).contains("409"), "{}", stderr(&dup));
    let bad_plan = control.admin(ADMIN_TOKEN, &["accounts", "create", "x", "--plan", "gold"]);
    assert!(
        stderr(&bad_plan).contains("no plan \"gold\""),
        "{}",
        stderr(&bad_plan)
    );

    // The trial plan allows 2 gateway keys; the secret is shown once.
    let k1 = control.admin_json(&["keys", "create", "acme", "web"]);
    let secret1 = k1["secret"].as_str().unwrap().to_string();
    assert!(secret1.starts_with("tg_live_") && secret1.len() == 8 + 64);
    let k2 = control.admin_json(&["keys", "create", "acme", "ci", "--test"]);
    assert!(k2["secret"].as_str().unwrap().starts_with("tg_test_"));
    let third = control.admin(ADMIN_TOKEN, &["keys", "create", "acme", "third"]);
    assert!(!third.status.success());
    assert!(
        stderr(&third).contains("403 Forbidden: plan \"trial\" allows 2 gateway keys"),
        "{}",
        stderr(&third)
    );
    // Listing never shows a secret.
    let listed = control.admin_json(&["keys", "list", "acme"]);
    assert_eq!(listed.as_array().unwrap().len(), 2);
    assert!(listed
        .as_array()
        .unwrap()
        .iter()
        .all(|k| k.get("secret").is_none()));
    assert!(!listed.to_string().contains(&secret1));
    // A table for people shows the id, not the key.
    let table = control.admin(ADMIN_TOKEN, &["keys", "list", "acme"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains(k1["id"].as_str().unwrap()) && !text.contains(&secret1),
        "{text}"
    );

    // Revoking frees a slot; the revoked key stops working at once.
    let id1 = k1["id"].as_str().unwrap();
    let revoked = control.admin_json(&["keys", "revoke", id1]);
    assert!(revoked["revoked_at"].is_string());
    let (status, _) = control
        .call(Method::GET, "/api/v1/whoami", Some(&secret1), None)
        .await;
    assert_eq!(status, 401);
    control.admin_json(&["keys", "create", "acme", "third"]);

    // A bigger plan allows more keys.
    let moved = control.admin_json(&["accounts", "set-plan", "acme", "starter"]);
    assert_eq!(moved["plan"], "starter");
    control.admin_json(&["keys", "create", "acme", "fourth"]);

    let sc = control.admin_json(&["sidecars", "create", "fleet-a", "--account", "acme"]);
    let sc_secret = sc["secret"].as_str().unwrap().to_string();
    assert!(sc_secret.starts_with("tgs_"));
    let no_such = control.admin(
        ADMIN_TOKEN,
        &["sidecars", "create", "x", "--account", "nobody"],
    );
    assert!(
        stderr(&no_such).contains("no account \"nobody\""),
        "{}",
        stderr(&no_such)
    );
    control.admin_json(&["sidecars", "revoke", sc["id"].as_str().unwrap()]);

    // One audit entry per change, by the admin, with no secret in it.
    let audit = control.admin_json(&["audit"]);
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "account.create",
            "gateway_key.create",
            "gateway_key.create",
            "gateway_key.revoke",
            "gateway_key.create",
            "account.update",
            "gateway_key.create",
            "sidecar.create",
            "sidecar.revoke"
        ]
    );
    assert!(audit
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["actor"].as_str().unwrap().starts_with("admin:")));
    let all = audit.to_string();
    assert!(!all.contains(&secret1) && !all.contains(&sc_secret) && !all.contains(ADMIN_TOKEN));
    let update = &audit[5];
    assert_eq!(update["before"]["plan"], "trial");
    assert_eq!(update["after"]["plan"], "starter");
    // Filters: by action prefix, by target.
    let keys_only = control.admin_json(&["audit", "--action", "gateway_key."]);
    assert_eq!(keys_only.as_array().unwrap().len(), 5);
    let target = format!("gateway_key:{id1}");
    let one = control.admin_json(&["audit", "--target", &target]);
    assert_eq!(one.as_array().unwrap().len(), 2);
    let bad = control.admin(ADMIN_TOKEN, &["audit", "--since", "yesterday"]);
    assert!(stderr(&bad).contains("RFC 3339"), "{}", stderr(&bad));
}

/// A gateway key reads only its own account; a sidecar credential cannot
/// call admin routes; failures are 401 / 403 and counted.
#[tokio::test]
async fn credentials_are_scoped_and_failures_counted() {
    let control = Control::start("");
    control.admin_json(&["accounts", "create", "a"]);
    control.admin_json(&["accounts", "create", "b", "--plan", "pro"]);
    let key_a = control.admin_secret(&["keys", "create", "a", "app"]);
    let sidecar = control.admin_secret(&["sidecars", "create", "s"]);

    let (s, me) = control
        .call(Method::GET, "/api/v1/whoami", Some(&key_a), None)
        .await;
    assert_eq!(
        (s, me["kind"].as_str(), me["account"].as_str()),
        (200, Some("gateway_key"), Some("a"))
    );
    let (s, _) = control
        .call(Method::GET, "/api/v1/accounts/a", Some(&key_a), None)
        .await;
    assert_eq!(s, 200);
    let (s, _) = control
        .call(
            Method::GET,
            "/api/v1/accounts/a/gateway-keys",
            Some(&key_a),
            None,
        )
        .await;
    assert_eq!(s, 200);
    let mut forbidden = 0;
    for (method, path, token) in [
        (Method::GET, "/api/v1/accounts/b", &key_a),
        (Method::GET, "/api/v1/accounts/b/gateway-keys", &key_a),
        (Method::GET, "/api/v1/budgets?account=b", &key_a),
        (Method::GET, "/api/v1/byok/keys?account=b", &key_a),
        (Method::GET, "/api/v1/llm/usage?account=b", &key_a),
        (Method::POST, "/api/v1/budgets", &key_a),
        (Method::GET, "/api/v1/budgets", &sidecar),
        (Method::GET, "/api/v1/accounts", &key_a),
        (Method::POST, "/api/v1/accounts", &key_a),
        (Method::GET, "/api/v1/audit", &key_a),
        (Method::GET, "/api/v1/accounts", &sidecar),
        (Method::POST, "/api/v1/accounts/a/gateway-keys", &sidecar),
        (Method::GET, "/api/v1/sidecars", &sidecar),
        (
            Method::DELETE,
            "/api/v1/gateway-keys/gk_0000000000000000",
            &sidecar,
        ),
    ] {
        let (s, body) = control
            .call(
                method.clone(),
                path,
                Some(token),
                Some(json!({"name": "x"})),
            )
            .await;
        assert_eq!(s, 403, "{method} {path}: {body}");
        assert_eq!(body["error"]["type"], "forbidden");
        forbidden += 1;
    }
    let mut unauthorized = 0;
    for token in [
        None,
        Some("tg_live_0000000000000000000000000000000000000000000000000000000000000000"),
        Some("tgs_nope"),
        Some("not-a-token"),
    ] {
        let (s, body) = control
            .call(Method::GET, "/api/v1/whoami", token, None)
            .await;
        assert_eq!(s, 401, "{token:?}: {body}");
        unauthorized += 1;
    }
    let (_, metrics) = control.call(Method::GET, "/metrics", None, None).await;
    let metrics = metrics.as_str().unwrap().to_string();
    assert!(
        metrics.contains(&format!(
            "tollgate_control_auth_failures_total{{reason=\"forbidden\"}} {forbidden}"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "tollgate_control_auth_failures_total{{reason=\"unauthorized\"}} {unauthorized}"
        )),
        "{metrics}"
    );
    assert!(metrics.contains(
        "tollgate_control_requests_total{method=\"GET\",route=\"/api/v1/accounts/{account}\",status=\"403\"} 1"
    ), "{metrics}");
    assert!(metrics.contains("tollgate_control_accounts 2"), "{metrics}");
}

/// Credentials are stored only as hashes and survive a restart; the last
/// use is recorded.
#[tokio::test]
async fn credentials_are_stored_hashed_and_survive_a_restart() {
    let mut control = Control::start("");
    control.admin_json(&["accounts", "create", "acme"]);
    let key = control.admin_secret(&["keys", "create", "acme", "web"]);
    let sc = control.admin_secret(&["sidecars", "create", "s"]);
    control.restart();
    let (s, me) = control
        .call(Method::GET, "/api/v1/whoami", Some(&key), None)
        .await;
    assert_eq!(s, 200, "{me}");
    let (s, _) = control
        .call(Method::GET, "/api/v1/whoami", Some(&sc), None)
        .await;
    assert_eq!(s, 200);
    let listed = control.admin_json(&["keys", "list", "acme"]);
    assert!(listed[0]["last_used_at"].is_string(), "{listed}");
    assert!(control.stop());
    let hash = |s: &str| {
        use sha2::Digest;
        let d = sha2::Sha256::digest(s.as_bytes());
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    let files = support::files_under(&control.data_dir);
    assert!(!files.is_empty());
    for (path, bytes) in &files {
        for secret in [key.as_str(), sc.as_str(), ADMIN_TOKEN] {
            assert!(
                !contains(bytes, secret),
                "{path} holds a secret in plaintext"
            );
        }
    }
    assert!(
        files.iter().any(|(_, b)| contains(b, &hash(&key))),
        "the key's hash is what is stored"
    );
    assert!(!control.log().contains(&key) && !control.log().contains(ADMIN_TOKEN));
    // The data dir is private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&control.data_dir)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
}

/// `--check-config` lists every problem at once and exits 64.
#[test]
fn check_config_reports_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.toml");
    std::fs::write(
        &path,
        "listen = \"nowhere\"\ntls_key = \"k.pem\"\nsurprise = true\n[plans.trial]\nrpm = -5\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["control", "--check-config", "--config"])
        .arg(&path)
        .env("TOLLGATE_ADMIN_TOKEN", "short")
        .env("TOLLGATE_CONTROL_DEFAULT_PLAN", "gold")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = stderr(&out);
    for want in [
        "surprise: unknown key",
        "listen: not a socket address",
        "tls_cert: required when tls_key is set",
        "an admin token must be at least 24 characters",
        "plans.trial.rpm: must not be negative",
        "default_plan (from env TOLLGATE_CONTROL_DEFAULT_PLAN): no plan \"gold\"",
    ] {
        assert!(err.contains(want), "{want:?} missing:\n{err}");
    }
    assert!(!err.contains("short"), "a token reached the output: {err}");
    let ok = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["control", "--check-config"])
        .env("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", stderr(&ok));
}

/// With a certificate and key the API is HTTPS only (rustls).
#[tokio::test]
async fn serves_https_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let control = Control::start_in(
        &format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"\n",
            cert_path.display(),
            key_path.display()
        ),
        None,
        "https",
    );
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap())
        .resolve("localhost", control.addr)
        .build()
        .unwrap();
    let url = format!("https://localhost:{}/api/v1/whoami", control.addr.port());
    let me: Value = client
        .get(&url)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["kind"], "admin");
    // Plain HTTP on the TLS port gets no answer.
    let plain = reqwest::Client::new()
        .get(format!("http://{}/healthz", control.addr))
        .send()
        .await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
}

/// `POST /api/v1/byok/keys` as the admin: (status, body).
async fn put_provider_key(
    control: &Control,
    account: &str,
    provider: &str,
    key: &str,
) -> (u16, Value) {
    control
        .call(
            Method::POST,
            "/api/v1/byok/keys",
            Some(ADMIN_TOKEN),
            Some(json!({"account": account, "provider": provider, "key": key})),
        )
        .await
}

fn new_master_key() -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["control", "new-master-key"])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// BYOK: provider keys are sealed at rest, never returned, survive a
/// master-key rotation on the running endpoint, and a wrong or missing
/// master key stops the start with a clear message.
#[tokio::test]
async fn byok_keys_are_sealed_rotatable_and_need_the_right_master_key() {
    let (m1, m2) = (new_master_key(), new_master_key());
    assert_ne!(m1, m2);
    let mut control = Control::start_env("", None, "http", &[("TOLLGATE_MASTER_KEY", &m1)]);
    control.admin_json(&["accounts", "create", "acme"]);
    control.admin_json(&["accounts", "create", "beta"]);
    let provider_key = "sk-ant-api03-BYOKSECRET-0123456789-WXYZ";
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["admin", "--json", "--control", &control.url()])
        .args(["byok", "add", "acme", "anthropic", "--key-env", "THE_KEY"])
        .env("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("THE_KEY", provider_key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let stored: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stored["last4"], "WXYZ");
    assert_eq!(stored["id"], "acme/anthropic");
    let first_master = stored["master_key_id"].as_str().unwrap().to_string();
    let (s, _) = put_provider_key(&control, "beta", "openai", "sk-proj-OTHERSECRET-9876").await;
    assert_eq!(s, 201);
    // An unknown account, a short key: refused; nothing echoes a key.
    let (s, body) = put_provider_key(&control, "nobody", "openai", "sk-proj-NOSUCHACCOUNT").await;
    assert_eq!(s, 404, "{body}");
    assert!(!body.to_string().contains("NOSUCHACCOUNT"));
    let (s, body) = put_provider_key(&control, "acme", "openai", "short").await;
    assert_eq!(s, 400, "{body}");
    // Listing shows no key; a gateway key reads only its own account's.
    let listed = control.admin_json(&["byok", "list"]);
    assert_eq!(listed.as_array().unwrap().len(), 2);
    assert!(!listed.to_string().contains("BYOKSECRET"));
    let gk = control.admin_secret(&["keys", "create", "acme", "app"]);
    let (s, own) = control
        .call(
            Method::GET,
            "/api/v1/byok/keys?account=acme",
            Some(&gk),
            None,
        )
        .await;
    assert_eq!((s, own.as_array().unwrap().len()), (200, 1));
    let (s, _) = control
        .call(
            Method::GET,
            "/api/v1/byok/keys?account=beta",
            Some(&gk),
            None,
        )
        .await;
    assert_eq!(s, 403);

    // Rotation on the running endpoint re-wraps both keys.
    let key_file = control.data_dir.parent().unwrap().join("new.key");
    std::fs::write(&key_file, &m2).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["control", "rotate-master-key", "--control", &control.url()])
        .arg("--new-key-file")
        .arg(&key_file)
        .env("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("re-wrapped 2 provider keys"));
    let listed = control.admin_json(&["byok", "list"]);
    assert!(listed
        .as_array()
        .unwrap()
        .iter()
        .all(|k| k["master_key_id"] != first_master.as_str()));
    // New keys are sealed under the new master key while it runs.
    control.admin_json(&["accounts", "create", "gamma"]);
    let (s, _) = put_provider_key(&control, "gamma", "anthropic", "sk-ant-GAMMASECRET-1").await;
    assert_eq!(s, 201);
    assert!(control.stop());

    // The old master key no longer opens the store: a clear refusal.
    let (code, log) = control.start_failing(&[("TOLLGATE_MASTER_KEY", &m1)]);
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("sealed under master key") && log.contains("but the configured master key is"),
        "{log}"
    );
    let (_, log) = control.start_failing(&[]);
    assert!(log.contains("no master key is configured"), "{log}");
    let (_, log) = control.start_failing(&[("TOLLGATE_MASTER_KEY", "not-a-key")]);
    assert!(log.contains("a master key is 32 bytes"), "{log}");
    // The new one opens every stored key (checked at start).
    control.start_again(&[("TOLLGATE_MASTER_KEY", &m2)]);
    assert_eq!(
        control
            .admin_json(&["byok", "list"])
            .as_array()
            .unwrap()
            .len(),
        3
    );
    let rotations = control.admin_json(&["audit", "--action", "master_key.rotate"]);
    assert_eq!(rotations[0]["after"]["rewrapped"], 2, "{rotations}");
    let creates = control.admin_json(&["audit", "--action", "byok_key."]);
    assert_eq!(creates.as_array().unwrap().len(), 3);
    assert!(!creates.to_string().contains("SECRET"));
    assert!(control.stop());

    // Nothing secret at rest or in the logs (debug level).
    let log = control.log();
    for (path, bytes) in support::files_under(&control.data_dir) {
        for secret in ["BYOKSECRET", "OTHERSECRET", "GAMMASECRET", &m1, &m2] {
            assert!(!contains(&bytes, secret), "{path} holds {secret}");
        }
    }
    for secret in [
        "BYOKSECRET",
        "OTHERSECRET",
        "GAMMASECRET",
        &m1,
        &m2,
        ADMIN_TOKEN,
    ] {
        assert!(!log.contains(secret), "the log holds {secret}");
    }
}
