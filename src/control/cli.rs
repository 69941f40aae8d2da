//! `tollgate admin`: the operator's CLI over the control API. Tables for
//! people, `--json` for scripts. Part of the CLI edge (errors are anyhow).

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde_json::Value;

use super::auth::ADMIN_PREFIX;

/// Where the control endpoint is and who is calling.
#[derive(Args, Debug)]
pub struct AdminArgs {
    /// The control endpoint.
    #[arg(
        long,
        env = "TOLLGATE_CONTROL_URL",
        default_value = "http://127.0.0.1:8790"
    )]
    pub control: String,
    /// An admin token (or a gateway key, for the calls it may make).
    #[arg(long, env = "TOLLGATE_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: AdminCommand,
}

/// `tollgate admin …`
#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Print a fresh admin token and its SHA-256 (for admin_token_sha256); calls nothing.
    NewToken,
    /// Who the token is.
    Whoami,
    /// The plans and their limits.
    Plans,
    /// Accounts.
    #[command(subcommand)]
    Accounts(AccountsCommand),
    /// Gateway keys (tg_live_… / tg_test_…) of an account.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Sidecar credentials (tgs_…).
    #[command(subcommand)]
    Sidecars(SidecarsCommand),
    /// The audit log of administrative changes.
    Audit(AuditArgs),
    /// Accounts' own provider keys (BYOK), stored sealed.
    #[command(subcommand)]
    Byok(ByokCommand),
    /// Budgets held by the control endpoint and synced to sidecars.
    #[command(subcommand)]
    Budgets(BudgetsCommand),
    /// Model aliases synced to every sidecar's routing.
    #[command(subcommand)]
    Aliases(AliasesCommand),
}

#[derive(Subcommand, Debug)]
pub enum AliasesCommand {
    /// Every alias.
    List,
    /// Create or replace an alias.
    ///
    /// Example:
    ///   tollgate admin aliases put smart --target anthropic/claude-sonnet-4-5 \
    ///     --target openrouter/openai/gpt-5 --max-tokens openrouter/openai/gpt-5=2000
    #[command(verbatim_doc_comment)]
    Put {
        name: String,
        /// provider/model, in order (repeatable).
        #[arg(long = "target", required = true)]
        targets: Vec<String>,
        /// ordered (default), cheapest or fastest.
        #[arg(long)]
        policy: Option<String>,
        /// TARGET=N: caps that target's output bound (repeatable).
        #[arg(long = "max-tokens")]
        max_tokens: Vec<String>,
    },
    /// Remove an alias.
    Delete { name: String },
}

#[derive(Subcommand, Debug)]
pub enum BudgetsCommand {
    /// Budgets (of one account, or all).
    List {
        #[arg(long)]
        account: Option<String>,
    },
    /// Create a budget for an account (within its plan's largest budget).
    Create {
        name: String,
        #[arg(long)]
        account: String,
        /// request, day or month.
        #[arg(long, default_value = "month")]
        period: String,
        /// Decimal USD.
        #[arg(long)]
        limit_usd: String,
        /// Lower max_tokens to what remains instead of refusing.
        #[arg(long)]
        clamp: bool,
        /// deny (default) or allow: what sidecars do once their lease is
        /// spent and the control endpoint cannot be reached.
        #[arg(long)]
        on_control_unreachable: Option<String>,
        /// With allow: the most the fleet may spend beyond its leases
        /// while the control endpoint is unreachable (decimal USD).
        #[arg(long)]
        unreachable_allowance_usd: Option<String>,
        /// A fraction of the limit that alerts once per period, fleet-wide (repeatable).
        #[arg(long = "soft-threshold")]
        soft_thresholds: Vec<f64>,
        /// Where those alerts are POSTed.
        #[arg(long)]
        alert_webhook: Option<String>,
    },
    /// Change a budget's limit.
    SetLimit { name: String, limit_usd: String },
    /// Change a budget's other settings.
    Update {
        name: String,
        #[arg(long)]
        limit_usd: Option<String>,
        /// deny or allow.
        #[arg(long)]
        on_control_unreachable: Option<String>,
        #[arg(long)]
        unreachable_allowance_usd: Option<String>,
        /// Replaces the thresholds (repeatable).
        #[arg(long = "soft-threshold")]
        soft_thresholds: Option<Vec<f64>>,
        /// "" removes it.
        #[arg(long)]
        alert_webhook: Option<String>,
    },
    /// A budget's current period across the fleet: limit, spent, leased
    /// per sidecar and left.
    Status { name: String },
    /// Remove a budget.
    Delete { name: String },
}

#[derive(Subcommand, Debug)]
pub enum ByokCommand {
    /// Stored keys (provider, last four characters, dates; never the key).
    List {
        #[arg(long)]
        account: Option<String>,
    },
    /// Store (or replace) an account's key for a provider. The key is read
    /// from a file or an environment variable, never from the command line.
    Add {
        account: String,
        provider: String,
        /// File holding the key.
        #[arg(long, conflicts_with = "key_env")]
        key_file: Option<std::path::PathBuf>,
        /// Environment variable holding the key.
        #[arg(long)]
        key_env: Option<String>,
    },
    /// Remove an account's key for a provider.
    Remove { account: String, provider: String },
}

#[derive(Subcommand, Debug)]
pub enum AccountsCommand {
    /// Every account.
    List,
    /// Create an account.
    Create {
        name: String,
        /// Default: the control endpoint's default_plan.
        #[arg(long)]
        plan: Option<String>,
    },
    /// One account.
    Show { name: String },
    /// Move an account to another plan.
    SetPlan { name: String, plan: String },
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// The account's gateway keys (revoked ones too).
    List { account: String },
    /// Mint a gateway key; the key is printed this once.
    Create {
        account: String,
        name: String,
        /// A tg_test_… key instead of tg_live_….
        #[arg(long)]
        test: bool,
    },
    /// Revoke a gateway key by id (gk_…).
    Revoke { id: String },
}

#[derive(Subcommand, Debug)]
pub enum SidecarsCommand {
    /// Every sidecar credential (revoked ones too).
    List,
    /// Mint a sidecar credential; it is printed this once.
    Create {
        name: String,
        /// An account it serves (repeat; none: all).
        #[arg(long = "account")]
        accounts: Vec<String>,
    },
    /// Revoke a sidecar credential by id (sc_…).
    Revoke { id: String },
}

#[derive(Args, Debug)]
pub struct AuditArgs {
    #[arg(long)]
    pub actor: Option<String>,
    /// An action, or a prefix ending in "." (gateway_key.).
    #[arg(long)]
    pub action: Option<String>,
    #[arg(long)]
    pub target: Option<String>,
    /// RFC 3339.
    #[arg(long)]
    pub since: Option<String>,
    /// RFC 3339.
    #[arg(long)]
    pub until: Option<String>,
    #[arg(long)]
    pub limit: Option<usize>,
}

/// Runs one `tollgate admin` command; prints its result.
pub fn run(args: AdminArgs) -> anyhow::Result<()> {
    if let AdminCommand::NewToken = args.command {
        let token = crate::keys::generate_with_prefix(ADMIN_PREFIX)
            .map_err(|e| anyhow::anyhow!("the OS random number generator failed: {e}"))?;
        let hash = crate::keys::to_hex(&crate::keys::sha256(&token));
        println!("token:  {token}\nsha256: {hash}");
        return Ok(());
    }
    let client = Client {
        base: args.control.trim_end_matches('/').to_string(),
        token: args
            .token
            .clone()
            .context("no token: pass --token or set TOLLGATE_ADMIN_TOKEN")?,
    };
    let (value, columns): (Value, &[&str]) = match args.command {
        AdminCommand::NewToken => return Ok(()),
        AdminCommand::Whoami => (client.call("GET", "/api/v1/whoami", None)?, &[]),
        AdminCommand::Plans => (
            client.call("GET", "/api/v1/plans", None)?,
            &[
                "name",
                "max_gateway_keys",
                "rpm",
                "tpm",
                "batch",
                "cache",
                "max_budget_nusd",
            ],
        ),
        AdminCommand::Accounts(c) => match c {
            AccountsCommand::List => (
                client.call("GET", "/api/v1/accounts", None)?,
                ACCOUNT_COLUMNS,
            ),
            AccountsCommand::Create { name, plan } => (
                client.call(
                    "POST",
                    "/api/v1/accounts",
                    Some(serde_json::json!({"name": name, "plan": plan})),
                )?,
                ACCOUNT_COLUMNS,
            ),
            AccountsCommand::Show { name } => (
                client.call("GET", &format!("/api/v1/accounts/{name}"), None)?,
                ACCOUNT_COLUMNS,
            ),
            AccountsCommand::SetPlan { name, plan } => (
                client.call(
                    "PATCH",
                    &format!("/api/v1/accounts/{name}"),
                    Some(serde_json::json!({ "plan": plan })),
                )?,
                ACCOUNT_COLUMNS,
            ),
        },
        AdminCommand::Keys(c) => match c {
            KeysCommand::List { account } => (
                client.call(
                    "GET",
                    &format!("/api/v1/accounts/{account}/gateway-keys"),
                    None,
                )?,
                KEY_COLUMNS,
            ),
            KeysCommand::Create {
                account,
                name,
                test,
            } => (
                client.call(
                    "POST",
                    &format!("/api/v1/accounts/{account}/gateway-keys"),
                    Some(serde_json::json!({
                        "name": name, "mode": if test { "test" } else { "live" }
                    })),
                )?,
                KEY_COLUMNS,
            ),
            KeysCommand::Revoke { id } => (
                client.call("DELETE", &format!("/api/v1/gateway-keys/{id}"), None)?,
                KEY_COLUMNS,
            ),
        },
        AdminCommand::Sidecars(c) => match c {
            SidecarsCommand::List => (
                client.call("GET", "/api/v1/sidecars", None)?,
                SIDECAR_COLUMNS,
            ),
            SidecarsCommand::Create { name, accounts } => (
                client.call(
                    "POST",
                    "/api/v1/sidecars",
                    Some(serde_json::json!({"name": name, "accounts": accounts})),
                )?,
                SIDECAR_COLUMNS,
            ),
            SidecarsCommand::Revoke { id } => (
                client.call("DELETE", &format!("/api/v1/sidecars/{id}"), None)?,
                SIDECAR_COLUMNS,
            ),
        },
        AdminCommand::Byok(c) => match c {
            ByokCommand::List { account } => {
                let path = match account {
                    Some(a) => format!("/api/v1/byok/keys?account={}", encode_query(&a)),
                    None => "/api/v1/byok/keys".into(),
                };
                (client.call("GET", &path, None)?, BYOK_COLUMNS)
            }
            ByokCommand::Add {
                account,
                provider,
                key_file,
                key_env,
            } => {
                let key = match (key_file, key_env) {
                    (Some(f), _) => std::fs::read_to_string(&f)
                        .with_context(|| format!("reading {}", f.display()))?,
                    (None, Some(v)) => {
                        std::env::var(&v).with_context(|| format!("${v} is not set"))?
                    }
                    (None, None) => bail!("give the key with --key-file or --key-env"),
                };
                (
                    client.call(
                        "POST",
                        "/api/v1/byok/keys",
                        Some(serde_json::json!({
                            "account": account, "provider": provider, "key": key.trim()
                        })),
                    )?,
                    BYOK_COLUMNS,
                )
            }
            ByokCommand::Remove { account, provider } => (
                client.call(
                    "DELETE",
                    &format!(
                        "/api/v1/byok/keys/{}/{}",
                        encode_query(&account),
                        encode_query(&provider)
                    ),
                    None,
                )?,
                BYOK_COLUMNS,
            ),
        },
        AdminCommand::Budgets(c) => match c {
            BudgetsCommand::List { account } => {
                let path = match account {
                    Some(a) => format!("/api/v1/budgets?account={}", encode_query(&a)),
                    None => "/api/v1/budgets".into(),
                };
                (client.call("GET", &path, None)?, BUDGET_COLUMNS)
            }
            BudgetsCommand::Create {
                name,
                account,
                period,
                limit_usd,
                clamp,
                on_control_unreachable,
                unreachable_allowance_usd,
                soft_thresholds,
                alert_webhook,
            } => (
                client.call(
                    "POST",
                    "/api/v1/budgets",
                    Some(serde_json::json!({
                        "name": name, "account": account, "period": period,
                        "limit_usd": limit_usd,
                        "on_insufficient": if clamp { "clamp" } else { "deny" },
                        "on_control_unreachable": on_control_unreachable,
                        "unreachable_allowance_usd": unreachable_allowance_usd,
                        "soft_thresholds": soft_thresholds,
                        "alert_webhook": alert_webhook,
                    })),
                )?,
                BUDGET_COLUMNS,
            ),
            BudgetsCommand::Update {
                name,
                limit_usd,
                on_control_unreachable,
                unreachable_allowance_usd,
                soft_thresholds,
                alert_webhook,
            } => {
                let mut patch = serde_json::Map::new();
                for (k, v) in [
                    ("limit_usd", limit_usd),
                    ("on_control_unreachable", on_control_unreachable),
                    ("unreachable_allowance_usd", unreachable_allowance_usd),
                    ("alert_webhook", alert_webhook),
                ] {
                    if let Some(v) = v {
                        patch.insert(k.into(), Value::String(v));
                    }
                }
                if let Some(t) = soft_thresholds {
                    patch.insert("soft_thresholds".into(), serde_json::json!(t));
                }
                (
                    client.call(
                        "PATCH",
                        &format!("/api/v1/budgets/{}", encode_query(&name)),
                        Some(Value::Object(patch)),
                    )?,
                    BUDGET_COLUMNS,
                )
            }
            BudgetsCommand::Status { name } => {
                let v = client.call(
                    "GET",
                    &format!("/api/v1/budgets/{}/status", encode_query(&name)),
                    None,
                )?;
                if args.json {
                    println!("{}", serde_json::to_string_pretty(&v)?);
                } else {
                    print!("{}", status_tables(std::slice::from_ref(&v)));
                }
                return Ok(());
            }
            BudgetsCommand::SetLimit { name, limit_usd } => (
                client.call(
                    "PATCH",
                    &format!("/api/v1/budgets/{}", encode_query(&name)),
                    Some(serde_json::json!({ "limit_usd": limit_usd })),
                )?,
                BUDGET_COLUMNS,
            ),
            BudgetsCommand::Delete { name } => (
                client.call(
                    "DELETE",
                    &format!("/api/v1/budgets/{}", encode_query(&name)),
                    None,
                )?,
                BUDGET_COLUMNS,
            ),
        },
        AdminCommand::Aliases(c) => {
            let v = match c {
                AliasesCommand::List => client.call("GET", "/api/v1/aliases", None)?,
                AliasesCommand::Put {
                    name,
                    targets,
                    policy,
                    max_tokens,
                } => client.call(
                    "PUT",
                    &format!("/api/v1/aliases/{}", encode_query(&name)),
                    Some(alias_body(&targets, policy, &max_tokens)?),
                )?,
                AliasesCommand::Delete { name } => client.call(
                    "DELETE",
                    &format!("/api/v1/aliases/{}", encode_query(&name)),
                    None,
                )?,
            };
            if args.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            (flatten_alias_targets(v), ALIAS_COLUMNS)
        }
        AdminCommand::Audit(a) => {
            let mut q = Vec::new();
            for (k, v) in [
                ("actor", a.actor),
                ("action", a.action),
                ("target", a.target),
                ("since", a.since),
                ("until", a.until),
                ("limit", a.limit.map(|l| l.to_string())),
            ] {
                if let Some(v) = v {
                    q.push(format!("{k}={}", encode_query(&v)));
                }
            }
            let path = if q.is_empty() {
                "/api/v1/audit".to_string()
            } else {
                format!("/api/v1/audit?{}", q.join("&"))
            };
            (
                client.call("GET", &path, None)?,
                &["seq", "ts", "actor", "action", "target"],
            )
        }
    };
    if args.json || columns.is_empty() {
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print!("{}", table(&value, columns));
        // A secret is shown once, under the table, so it is not cut off.
        if let Some(secret) = value.get("secret").and_then(Value::as_str) {
            println!("\n{secret}\n(shown once: store it now; only its hash is kept)");
        }
    }
    Ok(())
}

const BUDGET_COLUMNS: &[&str] = &[
    "name",
    "account",
    "period",
    "limit_usd",
    "on_insufficient",
    "created_at",
];
const ALIAS_COLUMNS: &[&str] = &["name", "policy", "targets", "updated_at"];

/// The `PUT /api/v1/aliases/{name}` body of `tollgate admin aliases put`.
fn alias_body(
    targets: &[String],
    policy: Option<String>,
    caps: &[String],
) -> anyhow::Result<Value> {
    let mut capped: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
    for c in caps {
        let (t, n) = c
            .rsplit_once('=')
            .with_context(|| format!("--max-tokens {c:?}: expected TARGET=N"))?;
        let n: u64 = n
            .parse()
            .with_context(|| format!("--max-tokens {c:?}: N is not a number"))?;
        if !targets.iter().any(|x| x == t) {
            bail!("--max-tokens {c:?}: {t} is not one of the --target values");
        }
        capped.insert(t, n);
    }
    let targets: Vec<Value> = targets
        .iter()
        .map(|t| match capped.get(t.as_str()) {
            Some(n) => serde_json::json!({"target": t, "max_tokens": n}),
            None => Value::String(t.clone()),
        })
        .collect();
    let mut body = serde_json::json!({ "targets": targets });
    if let Some(p) = policy {
        body["policy"] = Value::String(p);
    }
    Ok(body)
}

/// Alias targets as `provider/model[≤N]` strings, for the table.
fn flatten_alias_targets(mut v: Value) -> Value {
    let flatten = |a: &mut Value| {
        if let Some(targets) = a.get_mut("targets").and_then(Value::as_array_mut) {
            for t in targets.iter_mut() {
                let name = t["target"].as_str().unwrap_or_default().to_string();
                *t = Value::String(match t["max_tokens"].as_u64() {
                    Some(n) => format!("{name}≤{n}"),
                    None => name,
                });
            }
        }
    };
    match &mut v {
        Value::Array(items) => items.iter_mut().for_each(flatten),
        other => flatten(other),
    }
    v
}

const BYOK_COLUMNS: &[&str] = &["id", "last4", "master_key_id", "created_at", "last_used_at"];
const ACCOUNT_COLUMNS: &[&str] = &["name", "plan", "gateway_keys", "created_at"];
const KEY_COLUMNS: &[&str] = &[
    "id",
    "account",
    "name",
    "mode",
    "created_at",
    "last_used_at",
    "revoked_at",
];
const SIDECAR_COLUMNS: &[&str] = &[
    "id",
    "name",
    "accounts",
    "created_at",
    "last_used_at",
    "revoked_at",
];

/// Budget statuses as a summary table, then each budget's sidecars.
fn status_tables(statuses: &[Value]) -> String {
    let mut out = table(
        &Value::Array(statuses.to_vec()),
        &[
            "name",
            "account",
            "period_key",
            "limit_usd",
            "spent_usd",
            "leased_usd",
            "left_usd",
        ],
    );
    for s in statuses {
        if s["sidecars"].as_array().is_some_and(|a| !a.is_empty()) {
            out.push_str(&format!("\n{}:\n", s["name"].as_str().unwrap_or("?")));
            out.push_str(&table(
                &s["sidecars"],
                &[
                    "sidecar",
                    "granted_usd",
                    "spent_usd",
                    "held_usd",
                    "expires_at",
                ],
            ));
        }
    }
    out
}

/// `tollgate budget status --control URL`: every budget the token may
/// read (or those named), fleet-wide.
pub fn budget_status(
    control: &str,
    token: &str,
    names: &[String],
    json: bool,
) -> anyhow::Result<String> {
    let client = Client {
        base: control.trim_end_matches('/').to_string(),
        token: token.to_string(),
    };
    let names: Vec<String> = if names.is_empty() {
        client
            .call("GET", "/api/v1/budgets", None)?
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|b| b["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    } else {
        names.to_vec()
    };
    let mut statuses = Vec::new();
    for n in &names {
        statuses.push(client.call(
            "GET",
            &format!("/api/v1/budgets/{}/status", encode_query(n)),
            None,
        )?);
    }
    if json {
        return Ok(format!("{}\n", serde_json::to_string_pretty(&statuses)?));
    }
    Ok(status_tables(&statuses))
}

/// A table of `value` (an object or a list of them) by `columns`.
fn table(value: &Value, columns: &[&str]) -> String {
    let rows: Vec<&Value> = match value {
        Value::Array(items) => items.iter().collect(),
        other => vec![other],
    };
    let mut lines = vec![columns.iter().map(|c| c.to_string()).collect::<Vec<_>>()];
    for row in rows {
        lines.push(
            columns
                .iter()
                .map(|c| match row.get(*c) {
                    None | Some(Value::Null) => "-".to_string(),
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Array(a)) if a.is_empty() => "all".to_string(),
                    Some(Value::Array(a)) => a
                        .iter()
                        .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                        .collect::<Vec<_>>()
                        .join(","),
                    Some(v) => v.to_string(),
                })
                .collect(),
        );
    }
    crate::table::render(&lines, usize::MAX)
}

fn encode_query(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// What `tollgate usage --control` asks.
pub struct UsageRequest<'a> {
    pub group_by: &'a str,
    pub account: Option<&'a str>,
    pub from: Option<&'a str>,
    pub to: Option<&'a str>,
    /// `table`, `json` or `csv`.
    pub format: &'a str,
}

/// `tollgate usage --control URL`: the ledger rollup as a table (the local
/// report's columns, with a total line), JSON or CSV.
pub fn usage(control: &str, token: &str, q: &UsageRequest<'_>) -> anyhow::Result<String> {
    let client = Client {
        base: control.trim_end_matches('/').to_string(),
        token: token.to_string(),
    };
    let mut query = vec![format!("group_by={}", encode_query(q.group_by))];
    for (k, v) in [("account", q.account), ("from", q.from), ("to", q.to)] {
        if let Some(v) = v {
            query.push(format!("{k}={}", encode_query(v)));
        }
    }
    if q.format == "csv" {
        query.push("format=csv".into());
        return client.text(&format!("/api/v1/llm/usage?{}", query.join("&")));
    }
    let v = client.call(
        "GET",
        &format!("/api/v1/llm/usage?{}", query.join("&")),
        None,
    )?;
    match q.format {
        "json" => Ok(format!("{}\n", serde_json::to_string_pretty(&v)?)),
        "table" => Ok(rollup_table(&v)),
        other => bail!("--format: table, json or csv, not {other:?}"),
    }
}

/// The rollup's rows and total as a text table.
fn rollup_table(v: &Value) -> String {
    let dims: Vec<String> = v["group_by"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d.as_str().map(str::to_owned))
        .collect();
    let numbers = [
        ("requests", "requests"),
        ("input_tokens", "input"),
        ("output_tokens", "output"),
        ("cache_write_tokens", "cache_write"),
        ("cache_read_tokens", "cache_read"),
        ("cost_usd", "cost_usd"),
        ("saved_usd", "saved_usd"),
    ];
    let cell = |row: &Value, k: &str| match &row[k] {
        Value::String(s) if s.is_empty() => "-".to_string(),
        Value::String(s) => s.clone(),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    };
    let mut header: Vec<String> = dims.clone();
    header.extend(numbers.iter().map(|(_, h)| h.to_string()));
    let mut lines = vec![header];
    for row in v["rows"].as_array().into_iter().flatten() {
        let mut line: Vec<String> = dims.iter().map(|d| cell(row, d)).collect();
        line.extend(numbers.iter().map(|(k, _)| cell(row, k)));
        lines.push(line);
    }
    let mut total: Vec<String> = (0..dims.len().max(1))
        .map(|i| {
            if i == 0 {
                "TOTAL".into()
            } else {
                String::new()
            }
        })
        .collect();
    if dims.is_empty() {
        for line in &mut lines {
            line.insert(0, String::new());
        }
    }
    total.extend(numbers.iter().map(|(k, _)| cell(&v["total"], k)));
    lines.push(total);
    crate::table::render(&lines, dims.len().max(1))
}

/// `tollgate control rotate-master-key`: re-wraps every stored provider
/// key under the new master key, on the running endpoint (no restart; give
/// it the new key in master_key_env / master_key_file before its next start).
pub fn rotate_master_key(control: &str, token: &str, new_key: &str) -> anyhow::Result<()> {
    let client = Client {
        base: control.trim_end_matches('/').to_string(),
        token: token.to_string(),
    };
    let out = client.call(
        "POST",
        "/api/v1/byok/rotate-master-key",
        Some(serde_json::json!({ "new_master_key": new_key.trim() })),
    )?;
    println!(
        "re-wrapped {} provider keys; master key is now {}",
        out["rewrapped"], out["master_key_id"]
    );
    println!("set the new key in master_key_env / master_key_file before the next start");
    Ok(())
}

struct Client {
    base: String,
    token: String,
}

impl Client {
    /// One GET whose answer is text (CSV).
    fn text(&self, path: &str) -> anyhow::Result<String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let url = format!("{}{path}", self.base);
        runtime.block_on(async {
            let resp = reqwest::Client::new()
                .get(&url)
                .bearer_auth(&self.token)
                .send()
                .await
                .with_context(|| format!("calling the control endpoint at {url}"))?;
            let status = resp.status();
            let text = resp.text().await?;
            if !status.is_success() {
                bail!("{status}: {text}");
            }
            Ok(text)
        })
    }

    /// One call; the JSON answer, or the API's error message.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let url = format!("{}{path}", self.base);
        runtime.block_on(async {
            let method = reqwest::Method::from_bytes(method.as_bytes())?;
            let mut req = reqwest::Client::new()
                .request(method, &url)
                .bearer_auth(&self.token);
            if let Some(b) = body {
                req = req
                    .header("content-type", "application/json")
                    .body(serde_json::to_vec(&b)?);
            }
            let resp = req
                .send()
                .await
                .with_context(|| format!("calling the control endpoint at {url}"))?;
            let status = resp.status();
            let text = resp.text().await?;
            let value: Value = serde_json::from_str(&text)
                .with_context(|| format!("{url} answered {status} with no JSON"))?;
            if !status.is_success() {
                let msg = value
                    .pointer("/error/message")
                    .and_then(Value::as_str)
                    .unwrap_or(&text);
                bail!("{status}: {msg}");
            }
            Ok(value)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_and_queries() {
        let v = serde_json::json!([
            {"id": "gk_1", "accounts": [], "revoked_at": null},
            {"id": "gk_2", "accounts": ["a", "b"], "revoked_at": "2026-01-01T00:00:00Z"}
        ]);
        let t = table(&v, &["id", "accounts", "revoked_at"]);
        assert!(t.contains("gk_1  all       -"), "{t}");
        assert!(t.contains("gk_2  a,b       2026-01-01T00:00:00Z"), "{t}");
        assert_eq!(encode_query("gateway_key."), "gateway_key.");
        assert_eq!(
            encode_query("2026-12-03T00:00:00+01:00"),
            "2026-12-03T00%3A00%3A00%2B01%3A00"
        );
    }
}
