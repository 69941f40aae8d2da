//! `tollgate`: the CLI. Thin: parse flags, load the config, build the
//! services, hand them to pingora.

/// jemalloc rather than glibc's malloc: measured on the dataplane bench
/// (c=64, same run), +23% throughput and -17% proxy CPU per request, and memory
/// freed after a burst goes back to the kernel (see `.cargo/config.toml`)
/// instead of staying in glibc's per-thread arenas.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server};
use pingora::services::listening::Service;

use tollgate::admin::Admin;
use tollgate::budget::alerts::{AlertService, AlertSink};
use tollgate::budget::{self, Ledger, SystemClock};
use tollgate::cache::{self, Cache};
use tollgate::config::{self, Config, Flags, Sources};
use tollgate::keys::{self as gateway_keys, KeyMode};
use tollgate::metrics::Metrics;
use tollgate::proxy::intercept::Intercept;
use tollgate::proxy::lifecycle::{InFlight, Shutdown};
use tollgate::proxy::recorder::Recorder;
use tollgate::proxy::{State, Tollgate};
use tollgate::store::journal;
use tollgate::store::outbox::{self, Outbox, OutboxOptions};
use tollgate::store::sled::{CacheTree, EventTree, SpendTree};
use tollgate::store::CacheRecords;
use tollgate::usage_report::{GroupBy, UsageReport};

/// Exit status for a bad configuration (EX_CONFIG is 78; the contract says 64, EX_USAGE).
const EXIT_BAD_CONFIG: u8 = 64;
/// Page cache of the embedded store.
const SLED_CACHE_BYTES: u64 = 32 * 1024 * 1024;
/// Page cache of the ledger's store: it is appended to in batches (the
/// usage journal's fold, at the tree's tail) and read by reports and the
/// shipper, which the kernel's page cache serves as well; at 8 MiB it held
/// about 4 MiB more of an idle sidecar's memory than at 1.
const LEDGER_CACHE_BYTES: u64 = 1024 * 1024;

#[derive(Parser)]
#[command(
    name = "tollgate",
    version,
    about = "LLM cost-control sidecar: metering, usage ledger and provider-key injection in front of Anthropic and OpenAI-compatible APIs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sidecar proxy.
    ///
    /// Examples:
    ///   tollgate proxy                                   # defaults: 127.0.0.1:8787, ./tollgate-data
    ///   tollgate proxy --config tollgate.toml
    ///   tollgate proxy --check-config --config tollgate.toml
    ///   ANTHROPIC_BASE_URL=http://127.0.0.1:8787 python app.py
    #[command(verbatim_doc_comment)]
    Proxy(ProxyArgs),
    /// Print the usage table (requests, tokens, cost) from the local ledger.
    ///
    /// Reads the data directory directly when no proxy holds it, else asks
    /// the running proxy's admin listener.
    ///
    /// Examples:
    ///   tollgate usage
    ///   tollgate usage --by account,model,day
    ///   tollgate usage --by provider,status --data-dir /var/lib/tollgate
    #[command(verbatim_doc_comment)]
    Usage(UsageArgs),
    /// Gateway keys: mint a key an app uses instead of the provider key.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Budgets: what each has spent, reserved and left this period.
    #[command(subcommand)]
    Budget(BudgetCommand),
    /// Print the price table in force (built-in rows, `prices_file`, config
    /// overrides), USD per million tokens.
    ///
    /// Examples:
    ///   tollgate prices
    ///   tollgate prices --model claude-sonnet-5-5 --at 2026-10-01
    ///   tollgate prices --config tollgate.toml --json
    #[command(verbatim_doc_comment)]
    Prices {
        #[command(flatten)]
        config: ConfigArgs,
        /// Only the row that prices this model id (aliases, dated ids and
        /// provider slugs resolve as when metering).
        #[arg(long)]
        model: Option<String>,
        /// The table in force on this day (YYYY-MM-DD; default: now).
        #[arg(long)]
        at: Option<String>,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The exact cache: its size, and purging it.
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Ask the running proxy for its routing state: the aliases and each
    /// target's circuit breaker (closed, open, half_open), its transitions
    /// and its time to first byte.
    ///
    /// Examples:
    ///   tollgate status
    ///   tollgate status --config tollgate.toml --json
    #[command(verbatim_doc_comment)]
    Status {
        #[command(flatten)]
        config: ConfigArgs,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The CA of HTTPS_PROXY mode (name-constrained to the provider hosts).
    #[command(subcommand)]
    Ca(CaCommand),
    /// Run the control endpoint: accounts, plans, credentials, audit log.
    ///
    /// Examples:
    ///   TOLLGATE_ADMIN_TOKEN=$(tollgate admin new-token | awk '/token/{print $2}') tollgate control
    ///   tollgate control --config control.toml --listen 0.0.0.0:8790
    ///   tollgate control --check-config --config control.toml
    #[command(verbatim_doc_comment)]
    Control(ControlArgs),
    /// Run the sidecar injector: a mutating admission webhook (HTTPS) that
    /// adds the sidecar to pods annotated tollgate.dev/inject: "true".
    ///
    /// Examples:
    ///   tollgate inject --config inject.toml
    ///   TOLLGATE_INJECT_TLS_CERT=/tls/tls.crt TOLLGATE_INJECT_TLS_KEY=/tls/tls.key tollgate inject --listen 0.0.0.0:8443
    ///   tollgate inject --check-config --config inject.toml
    #[command(verbatim_doc_comment)]
    Inject(InjectArgs),
    /// Administer a control endpoint (accounts, keys, sidecars, audit).
    ///
    /// Examples:
    ///   tollgate admin new-token
    ///   tollgate admin accounts create acme --plan starter
    ///   tollgate admin keys create acme web
    ///   tollgate admin keys revoke gk_0123456789abcdef
    ///   tollgate admin sidecars create fleet-a --account acme
    ///   tollgate admin audit --action gateway_key. --json
    #[command(verbatim_doc_comment)]
    Admin(tollgate::control::cli::AdminArgs),
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
struct ControlArgs {
    #[command(subcommand)]
    action: Option<ControlAction>,
    /// TOML config file (env TOLLGATE_CONTROL_CONFIG).
    #[arg(long, env = "TOLLGATE_CONTROL_CONFIG")]
    config: Option<PathBuf>,
    /// API listener, e.g. 127.0.0.1:8790 (env TOLLGATE_CONTROL_LISTEN).
    #[arg(long)]
    listen: Option<String>,
    /// Directory of the control store (env TOLLGATE_CONTROL_DATA_DIR).
    #[arg(long)]
    data_dir: Option<String>,
    /// Validate the configuration and exit: 0 when valid, 64 with every problem listed.
    #[arg(long)]
    check_config: bool,
}

#[derive(Args)]
struct InjectArgs {
    /// TOML config file (env TOLLGATE_INJECT_CONFIG).
    #[arg(long, env = "TOLLGATE_INJECT_CONFIG")]
    config: Option<PathBuf>,
    /// Webhook listener, e.g. 0.0.0.0:8443 (env TOLLGATE_INJECT_LISTEN).
    #[arg(long)]
    listen: Option<String>,
    /// Validate the configuration and exit: 0 when valid, 64 with every problem listed.
    #[arg(long)]
    check_config: bool,
}

#[derive(Subcommand)]
enum CaCommand {
    /// Create the CA (ECDSA P-256) constrained to every configured
    /// provider's `hosts`: `ca.pem` (give it to the apps) and `ca.key` (0600).
    ///
    /// Examples:
    ///   tollgate ca init --dir /etc/tollgate/ca
    ///   tollgate ca init --config tollgate.toml        # ca_dir from the config
    #[command(verbatim_doc_comment)]
    Init {
        #[command(flatten)]
        config: ConfigArgs,
        /// Directory for ca.pem and ca.key (default: ca_dir).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Print the CA certificate, its validity and its name constraints.
    Show {
        #[command(flatten)]
        config: ConfigArgs,
        /// Directory of ca.pem (default: ca_dir).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum CacheCommand {
    /// Print the cache's entries and bytes (and, from a running proxy, its
    /// requests by result, savings and requests in flight).
    ///
    /// Examples:
    ///   tollgate cache stats
    ///   tollgate cache stats --config tollgate.toml --json
    #[command(verbatim_doc_comment)]
    Stats {
        #[command(flatten)]
        config: ConfigArgs,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Remove cached answers: all of them, or one account's.
    ///
    /// Examples:
    ///   tollgate cache purge
    ///   tollgate cache purge --account acme
    #[command(verbatim_doc_comment)]
    Purge {
        #[command(flatten)]
        config: ConfigArgs,
        /// Only this account's entries.
        #[arg(long)]
        account: Option<String>,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Print a new gateway key (once; it is not stored) and the
    /// `[[gateway_keys]]` entry, holding only its SHA-256, for the config.
    ///
    /// Examples:
    ///   tollgate keys new --account acme
    ///   tollgate keys new --account acme --name ci --test
    #[command(verbatim_doc_comment)]
    New {
        /// The account the key's requests belong to.
        #[arg(long)]
        account: String,
        /// Names the key in logs, metrics and rate limits (default: a prefix of its hash).
        #[arg(long)]
        name: Option<String>,
        /// A tg_test_ key (accepted by sidecars with gateway_keys_mode = "test" or "any").
        #[arg(long)]
        test: bool,
    },
}

#[derive(Subcommand)]
enum BudgetCommand {
    /// Print each budget's period, limit, spent, reserved and remaining.
    ///
    /// Reads the data directory directly when no proxy holds it (nothing is
    /// reserved then), else asks the running proxy's admin listener. With
    /// --control: the control endpoint's budgets, fleet-wide (limit, spent,
    /// leased per sidecar, left).
    ///
    /// Examples:
    ///   tollgate budget status --config tollgate.toml
    ///   tollgate budget status --config tollgate.toml --json
    ///   tollgate budget status --control http://127.0.0.1:8790 --token $TOKEN
    #[command(verbatim_doc_comment)]
    Status {
        #[command(flatten)]
        config: ConfigArgs,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Ask this control endpoint instead of the local sidecar.
        #[arg(long, env = "TOLLGATE_CONTROL_URL")]
        control: Option<String>,
        /// With --control: an admin token (any budget) or a gateway key (its account's).
        #[arg(long, env = "TOLLGATE_ADMIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// With --control: only these budgets.
        names: Vec<String>,
    },
}

#[derive(Args)]
struct ConfigArgs {
    /// TOML config file (env TOLLGATE_CONFIG).
    #[arg(long, env = "TOLLGATE_CONFIG")]
    config: Option<PathBuf>,
    /// Base-URL listener, e.g. 127.0.0.1:8787 (env TOLLGATE_LISTEN).
    #[arg(long)]
    listen: Option<String>,
    /// Admin listener for /metrics, /healthz, /readyz; "" turns it off (env TOLLGATE_ADMIN_LISTEN).
    #[arg(long)]
    admin_listen: Option<String>,
    /// Directory of the embedded store (env TOLLGATE_DATA_DIR).
    #[arg(long)]
    data_dir: Option<String>,
}

#[derive(Args)]
struct ProxyArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Validate the configuration and exit: 0 when valid, 64 with every problem listed.
    #[arg(long)]
    check_config: bool,
}

#[derive(Args)]
struct UsageArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Group by these dimensions: account, workload, model, day, provider,
    /// tag, cache, route, status.
    #[arg(long, default_value = "account,model,day")]
    by: String,
    /// Read the control endpoint's ledger instead of the local one.
    #[arg(long, env = "TOLLGATE_CONTROL_URL")]
    control: Option<String>,
    /// With --control: an admin token (any account) or a gateway key (its own).
    #[arg(long, env = "TOLLGATE_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// With --control: only this account.
    #[arg(long)]
    account: Option<String>,
    /// With --control: RFC 3339 or YYYY-MM-DD, events at or after.
    #[arg(long)]
    from: Option<String>,
    /// With --control: RFC 3339 or YYYY-MM-DD, events before.
    #[arg(long)]
    to: Option<String>,
    /// With --control: table (default), json or csv.
    #[arg(long, default_value = "table")]
    format: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    // One TLS crypto provider for the whole process (reqwest has none built in).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let result = match cli.command {
        Command::Proxy(args) => proxy(args),
        Command::Usage(args) => usage(args),
        Command::Keys(KeysCommand::New {
            account,
            name,
            test,
        }) => keys_new(&account, name.as_deref(), test),
        Command::Prices {
            config,
            model,
            at,
            json,
        } => prices(&config, model.as_deref(), at.as_deref(), json),
        Command::Budget(BudgetCommand::Status {
            config,
            json,
            control,
            token,
            names,
        }) => match control {
            Some(control) => fleet_budget_status(&control, token, &names, json),
            None => budget_status(&config, json),
        },
        Command::Cache(CacheCommand::Stats { config, json }) => cache_stats(&config, json),
        Command::Status { config, json } => status(&config, json),
        Command::Cache(CacheCommand::Purge { config, account }) => {
            cache_purge(&config, account.as_deref())
        }
        Command::Ca(CaCommand::Init { config, dir }) => ca_init(&config, dir),
        Command::Ca(CaCommand::Show { config, dir }) => ca_show(&config, dir),
        Command::Control(args) => control(args),
        Command::Inject(args) => inject(args),
        Command::Admin(args) => tollgate::control::cli::run(args).map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tollgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr, filtered by TOLLGATE_LOG (or RUST_LOG), default `info`.
/// pingora and h2 are capped at `info` whatever the filter says: at debug and
/// trace they print whole request headers, which carry provider keys.
fn init_logging() {
    let filter = std::env::var("TOLLGATE_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".to_string());
    let capped = format!("{filter},pingora=info,pingora_core=info,pingora_proxy=info,pingora_pool=info,h2=info,hyper=info,rustls=info");
    let env_filter = tracing_subscriber::EnvFilter::try_new(&capped)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: log files and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .init();
}

fn load_config(args: &ConfigArgs) -> Result<Config, config::ConfigError> {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    config::load(&Sources {
        file: args.config.clone(),
        env,
        flags: Flags {
            listen: args.listen.clone(),
            admin_listen: args.admin_listen.clone(),
            data_dir: args.data_dir.clone(),
        },
    })
}

/// The configuration, or (having printed every problem) the exit code.
fn config_for(args: &ConfigArgs) -> Result<Config, ExitCode> {
    config_or_exit(load_config(args), false)
}

/// A loaded configuration to run with, or the exit code: 64 after printing
/// every problem, or 0 after `--check-config` found none.
fn config_or_exit<C, E: std::fmt::Display>(
    loaded: Result<C, E>,
    check_only: bool,
) -> Result<C, ExitCode> {
    match loaded {
        Err(e) => {
            eprintln!("tollgate: invalid configuration:\n{e}");
            Err(ExitCode::from(EXIT_BAD_CONFIG))
        }
        Ok(_) if check_only => {
            println!("configuration ok");
            Err(ExitCode::SUCCESS)
        }
        Ok(c) => Ok(c),
    }
}

#[derive(Subcommand)]
enum ControlAction {
    /// Print a fresh master key (base64) for master_key_env / master_key_file.
    NewMasterKey,
    /// Re-wrap every stored provider key under a new master key, on the
    /// running control endpoint (no restart).
    ///
    /// Examples:
    ///   tollgate control new-master-key > new.key
    ///   tollgate control rotate-master-key --new-key-file new.key
    #[command(verbatim_doc_comment)]
    RotateMasterKey {
        /// The control endpoint.
        #[arg(
            long,
            env = "TOLLGATE_CONTROL_URL",
            default_value = "http://127.0.0.1:8790"
        )]
        control: String,
        /// An admin token.
        #[arg(long, env = "TOLLGATE_ADMIN_TOKEN", hide_env_values = true)]
        token: String,
        /// File holding the new master key.
        #[arg(long)]
        new_key_file: PathBuf,
    },
}

fn control(args: ControlArgs) -> anyhow::Result<ExitCode> {
    match args.action {
        Some(ControlAction::NewMasterKey) => {
            let key = tollgate::envelope::MasterKey::generate()?;
            println!("{key}");
            return Ok(ExitCode::SUCCESS);
        }
        Some(ControlAction::RotateMasterKey {
            control,
            token,
            new_key_file,
        }) => {
            let new_key = std::fs::read_to_string(&new_key_file)
                .with_context(|| format!("reading {}", new_key_file.display()))?;
            tollgate::control::cli::rotate_master_key(&control, &token, &new_key)?;
            return Ok(ExitCode::SUCCESS);
        }
        None => {}
    }
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let flags = config::control::ControlFlags {
        listen: args.listen,
        data_dir: args.data_dir,
    };
    let loaded = config::control::load(args.config.as_deref(), &env, &flags);
    let config = match config_or_exit(loaded, args.check_config) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    tollgate::control::server::run(config)?;
    Ok(ExitCode::SUCCESS)
}

fn inject(args: InjectArgs) -> anyhow::Result<ExitCode> {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let flags = config::inject::InjectFlags {
        listen: args.listen,
    };
    let loaded = config::inject::load(args.config.as_deref(), &env, &flags);
    let config = match config_or_exit(loaded, args.check_config) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    tollgate::inject::server::run(config, &env)?;
    Ok(ExitCode::SUCCESS)
}

fn proxy(args: ProxyArgs) -> anyhow::Result<ExitCode> {
    let config = match config_for(&args.config) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    if args.check_config {
        println!("configuration ok");
        return Ok(ExitCode::SUCCESS);
    }
    run_proxy(config)?;
    Ok(ExitCode::SUCCESS)
}

fn run_proxy(config: Config) -> anyhow::Result<()> {
    // pingora retries a busy address for 30 s and then stops only that
    // service: fail fast and clearly instead.
    let forward_listen = config.forward_proxy.as_ref().map(|f| f.listen);
    for addr in std::iter::once(config.listen)
        .chain(config.admin_listen)
        .chain(forward_listen)
    {
        std::net::TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    }
    let metrics = Metrics::new().context("registering metrics")?;
    // Private before anything is opened in it (issue 12: prompts and the ledger).
    tollgate::data_dir::private_umask();
    if let tollgate::data_dir::Found::Existing {
        readable_by_others: true,
    } = tollgate::data_dir::prepare(&config.data_dir)?
    {
        tracing::warn!(
            data_dir = %config.data_dir.display(),
            "the data dir is readable by others (its files are not); chmod 700 it unless that is intended"
        );
    }
    // sled's default page cache is 1 GiB: far more than a sidecar should hold.
    let db = tollgate::store::sled::open_db(&config.data_dir, LEDGER_CACHE_BYTES)?.with_context(
        || {
            format!(
                "opening the store in {} (is another tollgate using it?)",
                config.data_dir.display()
            )
        },
    )?;
    let (alert_sink, alert_rx) = AlertSink::channel();
    let ledger = Arc::new(Ledger::new(
        config.budgets.clone(),
        Some(Arc::new(
            SpendTree::open(&db).context("opening the budget store")?,
        )),
        Arc::new(SystemClock),
        alert_sink,
        metrics.ledger(&config.budgets),
    ));
    // Budget spend is persisted with the usage journal's watermark, and what
    // an earlier run left in the journal is recovered into both.
    let event_tree: Arc<dyn tollgate::store::EventRecords> =
        Arc::new(EventTree::open(&db).context("opening the usage outbox")?);
    let (outbox, recovery) = Outbox::open(
        event_tree.clone(),
        &config.data_dir.join(journal::DIR),
        OutboxOptions {
            retention: config.outbox.retention,
            sync: config.outbox.sync,
        },
        metrics.outbox.clone(),
        Some(ledger.clone()),
    )
    .context("opening the usage outbox and journal")?;
    let recorder = Arc::new(Recorder::new(
        config.prices.clone(),
        outbox.clone(),
        metrics.clone(),
    ));
    recorder.count_recovered(&recovery.interrupted);
    let cache_records: Arc<dyn CacheRecords> = Arc::new(
        CacheTree::open(&config.data_dir, SLED_CACHE_BYTES)
            .context("opening the cache store")?
            .context("the cache store is in use by another process")?,
    );
    // Files an earlier run (or the stores just now) made with looser modes.
    let tightened = tollgate::data_dir::restrict_contents(&config.data_dir)?;
    if tightened > 0 {
        tracing::info!(tightened, "made the data dir's files private (0600 / 0700)");
    }
    let cache = Arc::new(
        Cache::open(
            cache_records.clone(),
            config.cache.clone(),
            metrics.cache.clone(),
        )
        .context("opening the cache store")?,
    );
    // Answers kept for Idempotency-Key retries: a tree of the sidecar's
    // store (durable with its flushes), never the cache's.
    let idempotency = Arc::new(tollgate::idempotency::Idempotency::new(
        Arc::new(
            tollgate::store::sled::IdempotencyTree::open(&db)
                .context("opening the idempotency store")?,
        ),
        config.idempotency_ttl,
        config.idempotency_wait,
        metrics.idempotency.clone(),
    ));
    // Batches submitted and not yet settled hold their reservations
    // again before any traffic (see proxy::batch).
    let batches = Arc::new(
        tollgate::proxy::batch::Batches::new(
            config.batches.clone(),
            config.sidecar_id.clone(),
            Arc::new(
                tollgate::store::sled::BatchTree::open(&db).context("opening the batch store")?,
            ),
            ledger.clone(),
            recorder.clone(),
            metrics.clone(),
        )
        .with_inputs(Arc::new(
            tollgate::store::sled::BatchTree::open_inputs(&db)
                .context("opening the batch input store")?,
        )),
    );
    let tracked = batches
        .resume()
        .context("resuming the batches of an earlier run")?;
    if tracked > 0 {
        tracing::info!(
            tracked,
            "batches not yet settled hold their reservations again"
        );
    }
    let in_flight = InFlight::new(metrics.in_flight.clone());
    let state = Arc::new(State::new(
        &config,
        recorder,
        ledger.clone(),
        cache.clone(),
        idempotency.clone(),
        metrics.clone(),
        in_flight.clone(),
        batches,
    ));
    tollgate::metrics::RouteCollector::register(&metrics.registry, state.router.clone())
        .context("registering the routing metrics")?;

    if let Some(link) = &config.control {
        match tollgate::proxy::sync::start(&state.fleet, link, &config.data_dir, &metrics) {
            Ok(Some(source)) => tracing::info!(
                version = state.fleet.version(),
                from = source,
                "serving the control endpoint's accounts, gateway keys and provider keys"
            ),
            Ok(None) => tracing::warn!(
                "no snapshot from the control endpoint yet: serving the local config until one arrives"
            ),
            Err(e) => anyhow::bail!("syncing with the control endpoint: {e}"),
        }
    }

    let conf = ServerConf {
        threads: config.threads,
        // tollgate drains in its own SIGTERM handler (see proxy::lifecycle).
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    // Behind a deadline for request heads (slow clients get a 408).
    // HTTP/1.1, and h2c with prior knowledge (local HTTP/2 clients).
    let mut base_url_http =
        pingora::proxy::http_proxy(&server.configuration, Tollgate::new(state.clone()));
    let mut options = pingora::apps::HttpServerOptions::default();
    options.h2c = true;
    options.h2_idle_timeout = Some(config.timeouts.idle);
    base_url_http.server_options = Some(options);
    let listener = tollgate::proxy::ingress::head::Listener {
        http: Arc::new(base_url_http),
        request_head: config.timeouts.request_head,
    };
    let mut proxy = Service::new("tollgate proxy".to_string(), listener);
    proxy.add_tcp(&config.listen.to_string());
    server.add_service(proxy);

    if let Some(f) = &config.forward_proxy {
        let hosts = intercepted_hosts(&config);
        let minter = tollgate::ca::Minter::load(&config.ca_dir, &hosts).with_context(|| {
            format!(
                "HTTPS_PROXY mode needs the CA in {}",
                config.ca_dir.display()
            )
        })?;
        let mut http =
            pingora::proxy::http_proxy(&server.configuration, Tollgate::intercepted(state.clone()));
        // Intercepted h2 connections close when idle, like everything else.
        let mut options = pingora::apps::HttpServerOptions::default();
        options.h2_idle_timeout = Some(config.timeouts.idle);
        http.server_options = Some(options);
        let intercept = Intercept {
            http: Arc::new(http),
            minter: Arc::new(minter),
            policy: f.tunnel_policy,
            auth_sha256: f.auth_sha256,
            handshake: config.timeouts.handshake,
            idle: config.timeouts.idle,
            request_head: config.timeouts.request_head,
            guard_local: !f.listen.ip().is_loopback(),
            tls: Default::default(),
        };
        let mut service = Service::new("tollgate forward proxy".to_string(), intercept);
        service.add_tcp(&f.listen.to_string());
        server.add_service(service);
        tracing::info!(listen = %f.listen, hosts = ?hosts, "HTTPS_PROXY mode on");
    }

    server.add_service(pingora::services::background::background_service(
        "idempotency sweep",
        tollgate::proxy::idempotency::Sweeper {
            keys: idempotency.clone(),
        },
    ));
    server.add_service(pingora::services::background::background_service(
        "batch settlement",
        tollgate::proxy::batch::BatchService {
            state: state.clone(),
        },
    ));
    server.add_service(pingora::services::background::background_service(
        "budget alerts",
        AlertService::new(alert_rx, metrics.budget_alert_failures.clone()),
    ));

    let leases = match &config.control {
        Some(link) => Some(tollgate::proxy::lease::LeaseService {
            ledger: ledger.clone(),
            leases: state.leases.clone(),
            link: link.clone(),
            sidecar_id: config.sidecar_id.clone(),
            instance: tollgate::proxy::lease::instance_id(&config.data_dir)?,
        }),
        None => None,
    };
    if let Some(service) = &leases {
        settle_leases(service, true);
        server.add_service(pingora::services::background::background_service(
            "budget leases",
            service.clone(),
        ));
    }
    if let Some(link) = &config.control {
        server.add_service(pingora::services::background::background_service(
            "control sync",
            tollgate::proxy::sync::SyncService {
                fleet: state.fleet.clone(),
                link: link.clone(),
                data_dir: config.data_dir.clone(),
                metrics: metrics.clone(),
            },
        ));
        server.add_service(pingora::services::background::background_service(
            "usage shipping",
            tollgate::proxy::ship::Shipper::new(
                link.clone(),
                event_tree.clone(),
                metrics.outbox.depth.clone(),
                metrics.ship.clone(),
            ),
        ));
    }

    if let Some(addr) = config.admin_listen {
        let admin = Admin {
            metrics: metrics.clone(),
            outbox: outbox.clone(),
            in_flight: in_flight.clone(),
            ledger: ledger.clone(),
            cache: cache.clone(),
            router: state.router.clone(),
        };
        let mut service = Service::new("tollgate admin".to_string(), admin);
        service.threads = Some(1);
        service.add_tcp(&addr.to_string());
        server.add_service(service);
    }

    tracing::info!(
        listen = %config.listen,
        admin = ?config.admin_listen,
        data_dir = %config.data_dir.display(),
        providers = ?config.providers.iter().map(|p| (&p.name, p.api_key.is_some())).collect::<Vec<_>>(),
        "tollgate listening on {}",
        config.listen
    );
    server.run(RunArgs {
        shutdown_signal: Box::new(Shutdown {
            in_flight,
            grace: config.shutdown_grace,
        }),
    });
    outbox.close();
    ledger.persist().context("writing budget state")?;
    // Every request has settled: what is unused goes back to the fleet.
    if let Some(service) = leases {
        settle_leases(&service, false);
    }
    idempotency
        .flush()
        .context("final flush of the idempotent answers")?;
    db.flush().context("final flush of the store")?;
    if !cache.writer.drain(std::time::Duration::from_secs(5)) {
        tracing::warn!("cache writer did not drain in time; the newest answers are not cached");
    }
    cache_records.flush().context("final flush of the cache")?;
    tracing::info!("tollgate stopped");
    Ok(())
}

/// Takes the fleet budgets' leases before traffic (`take`), or returns
/// them at shutdown, within a few seconds. Either may fail without harm:
/// requests then wait for a lease (at most `lease_wait`), or the leases
/// expire.
fn settle_leases(service: &tollgate::proxy::lease::LeaseService, take: bool) {
    let what = if take { "taken at start" } else { "returned" };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "budget leases not {what}: no runtime");
            return;
        }
    };
    let done = runtime.block_on(async {
        let call = async {
            if take {
                service.warm().await
            } else {
                service.return_all().await
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(3), call).await
    });
    match done {
        Ok(Ok(())) => tracing::info!("budget leases {what}"),
        Ok(Err(e)) => tracing::warn!(error = %e, "budget leases not {what}"),
        Err(_) => tracing::warn!("budget leases not {what} in time"),
    }
}

fn usage(args: UsageArgs) -> anyhow::Result<ExitCode> {
    if let Some(control) = &args.control {
        let token = args.token.as_deref().context(
            "--control needs --token (or TOLLGATE_ADMIN_TOKEN): an admin token or a gateway key",
        )?;
        let q = tollgate::control::cli::UsageRequest {
            group_by: &args.by,
            account: args.account.as_deref(),
            from: args.from.as_deref(),
            to: args.to.as_deref(),
            format: &args.format,
        };
        print!("{}", tollgate::control::cli::usage(control, token, &q)?);
        return Ok(ExitCode::SUCCESS);
    }
    let config = match config_for(&args.config) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let by = GroupBy::parse(&args.by)?;
    if !config.data_dir.exists() {
        anyhow::bail!(
            "no ledger at {} (has the proxy run here?)",
            config.data_dir.display()
        );
    }
    match open_store(&config)? {
        Some(db) => {
            let stored = EventTree::open(&db)?;
            // After a crash, the journal holds events the outbox does not yet.
            let unfolded = outbox::unfolded_events(&stored, &config.data_dir.join(journal::DIR))?;
            let mut report = UsageReport::new(&by);
            outbox::for_each_event(&stored, &mut |e| report.add(&e))?;
            for e in &unfolded {
                report.add(e);
            }
            print!("{}", report.render());
        }
        // A running proxy holds the store: ask it.
        None => print!("{}", fetch_admin_usage(running_admin(&config)?, &args.by)?),
    }
    Ok(ExitCode::SUCCESS)
}

fn keys_new(account: &str, name: Option<&str>, test: bool) -> anyhow::Result<ExitCode> {
    tollgate::identity::check_name("--account", account).map_err(|e| anyhow::anyhow!(e.0))?;
    let mode = if test { KeyMode::Test } else { KeyMode::Live };
    let key = gateway_keys::generate(mode)
        .map_err(|e| anyhow::anyhow!("reading the system's random source: {e}"))?;
    let hash = gateway_keys::to_hex(&gateway_keys::sha256(&key));
    let name = name.map_or_else(|| hash[..12].to_string(), str::to_string);
    tollgate::identity::check_name("--name", &name).map_err(|e| anyhow::anyhow!(e.0))?;
    println!("{key}");
    println!();
    println!("# Give the key above to the app (e.g. ANTHROPIC_API_KEY); it is shown only once.");
    println!("# Add this to the sidecar's config:");
    print!("{}", gateway_keys::config_entry(&key, account, &name));
    Ok(ExitCode::SUCCESS)
}

fn prices(
    args: &ConfigArgs,
    model: Option<&str>,
    at: Option<&str>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let config = match config_for(args) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let at = match at {
        Some(day) => time::Date::parse(
            day,
            time::macros::format_description!("[year]-[month]-[day]"),
        )
        .map(|d| d.midnight().assume_utc().unix_timestamp())
        .with_context(|| format!("--at: not a YYYY-MM-DD day: {day:?}"))?,
        None => time::OffsetDateTime::now_utc().unix_timestamp(),
    };
    let table = &config.prices;
    let rows: Vec<(String, Option<i64>, tollgate::meter::prices::ModelPrice)> = match model {
        Some(m) => match table.lookup_at(m, at) {
            Some(p) => {
                let from = table
                    .in_force(at)
                    .into_iter()
                    .find(|(_, _, q)| *q == p)
                    .and_then(|(_, from, _)| from);
                vec![(m.to_string(), from, *p)]
            }
            None => {
                let f = table.fallback();
                eprintln!("{m} is not in the table: it is priced by price_fallback");
                vec![(format!("{m} (fallback)"), None, *f)]
            }
        },
        None => table
            .in_force(at)
            .into_iter()
            .map(|(id, from, p)| (id.to_string(), from, *p))
            .collect(),
    };
    let usd = |n: u64| tollgate::meter::money::format_usd(n);
    let day = |from: Option<i64>| match from {
        Some(t) => time::OffsetDateTime::from_unix_timestamp(t)
            .map(|d| d.date().to_string())
            .unwrap_or_default(),
        None => "override".to_string(),
    };
    let tier = |p: &tollgate::meter::prices::ModelPrice| match &p.long_context {
        None => "-".to_string(),
        Some(t) => format!(
            "{}>{}:whole:{}/{}/{}/{}/{}",
            t.counts.as_str(),
            t.threshold_input_tokens,
            usd(t.rates.input),
            usd(t.rates.output),
            usd(t.rates.cache_write_5m),
            usd(t.rates.cache_write_1h),
            usd(t.rates.cache_read)
        ),
    };
    if json {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .map(|(id, from, p)| {
                serde_json::json!({
                    "model": id, "effective_from": day(*from),
                    "input": usd(p.rates.input), "output": usd(p.rates.output),
                    "write_5m": usd(p.rates.cache_write_5m), "write_1h": usd(p.rates.cache_write_1h),
                    "read": usd(p.rates.cache_read),
                    "batch": format!("{}", f64::from(p.batch_multiplier_ppm) / 1e6),
                    "tier": tier(p),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut lines = vec![[
        "model", "from", "input", "output", "write_5m", "write_1h", "read", "batch", "tier",
    ]
    .map(str::to_string)
    .to_vec()];
    for (id, from, p) in &rows {
        lines.push(vec![
            id.clone(),
            day(*from),
            usd(p.rates.input),
            usd(p.rates.output),
            usd(p.rates.cache_write_5m),
            usd(p.rates.cache_write_1h),
            usd(p.rates.cache_read),
            format!("{}", f64::from(p.batch_multiplier_ppm) / 1e6),
            tier(p),
        ]);
    }
    print!("{}", tollgate::table::render(&lines, 2));
    println!("(USD per million tokens)");
    Ok(ExitCode::SUCCESS)
}

fn fleet_budget_status(
    control: &str,
    token: Option<String>,
    names: &[String],
    json: bool,
) -> anyhow::Result<ExitCode> {
    let token = token.context(
        "--control needs --token (or TOLLGATE_ADMIN_TOKEN): an admin token or a gateway key",
    )?;
    print!(
        "{}",
        tollgate::control::cli::budget_status(control, &token, names, json)?
    );
    Ok(ExitCode::SUCCESS)
}

fn budget_status(args: &ConfigArgs, json: bool) -> anyhow::Result<ExitCode> {
    let config = match config_for(args) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let statuses: Vec<budget::Status> = match open_store(&config)? {
        Some(db) => {
            let spend = SpendTree::open(&db)?;
            budget::status_offline(
                &config.budgets,
                &spend,
                time::OffsetDateTime::now_utc().unix_timestamp(),
            )
        }
        None => {
            let text = fetch_admin(running_admin(&config)?, "/budgets")?;
            serde_json::from_str(&text).context("reading the running proxy's /budgets")?
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&statuses)?);
    } else {
        print!("{}", budget::render_status(&statuses));
    }
    Ok(ExitCode::SUCCESS)
}

/// Opens the store, or says that a running proxy holds it (`None`).
fn open_store(config: &Config) -> anyhow::Result<Option<sled::Db>> {
    open_sled(&config.data_dir)
}

/// Opens the cache's own store (no maintenance: reading it changes
/// nothing), or says that a running proxy holds it.
fn open_cache_store(config: &Config) -> anyhow::Result<Option<cache::Store>> {
    let Some(records) = CacheTree::open(&config.data_dir, SLED_CACHE_BYTES)? else {
        return Ok(None);
    };
    Ok(Some(cache::Store::open(
        Arc::new(records),
        config.cache.max_bytes,
        None,
    )?))
}

fn open_sled(path: &std::path::Path) -> anyhow::Result<Option<sled::Db>> {
    Ok(tollgate::store::sled::open_db(path, SLED_CACHE_BYTES)?)
}

/// Every provider host that HTTPS_PROXY mode intercepts.
fn intercepted_hosts(config: &Config) -> Vec<String> {
    let mut hosts: Vec<String> = config
        .providers
        .iter()
        .flat_map(|p| p.hosts.iter().cloned())
        .collect();
    hosts.sort();
    hosts.dedup();
    hosts
}

fn ca_init(args: &ConfigArgs, dir: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let config = match config_for(args) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let dir = dir.unwrap_or_else(|| config.ca_dir.clone());
    let hosts = intercepted_hosts(&config);
    let cert = tollgate::ca::init(&dir, &hosts)?;
    println!("created {} (and its key, mode 0600)", cert.display());
    println!("constrained to: {}", hosts.join(", "));
    println!("apps trust it with e.g. SSL_CERT_FILE / NODE_EXTRA_CA_CERTS (see the README)");
    Ok(ExitCode::SUCCESS)
}

fn ca_show(args: &ConfigArgs, dir: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let config = match config_for(args) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let dir = dir.unwrap_or_else(|| config.ca_dir.clone());
    print!("{}", tollgate::ca::show(&dir)?.render());
    Ok(ExitCode::SUCCESS)
}

fn running_admin(config: &Config) -> anyhow::Result<std::net::SocketAddr> {
    config
        .admin_listen
        .context("the store is in use by a running proxy and its admin listener is off")
}

fn cache_stats(args: &ConfigArgs, json: bool) -> anyhow::Result<ExitCode> {
    let config = match config_for(args) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let stats: cache::Stats = match open_cache_store(&config)? {
        Some(store) => cache::Stats::offline(store.stats()),
        None => {
            let text = fetch_admin(running_admin(&config)?, "/cache/stats")?;
            serde_json::from_str(&text).context("reading the running proxy's /cache/stats")?
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&stats)?);
    } else {
        print!("{}", stats.render());
    }
    Ok(ExitCode::SUCCESS)
}

fn status(args: &ConfigArgs, json: bool) -> anyhow::Result<ExitCode> {
    let config = match config_for(args) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let admin = config.admin_listen.context(
        "tollgate status asks the running proxy's admin listener, which is off (admin_listen)",
    )?;
    let text = fetch_admin(admin, "/routes")?;
    let v: serde_json::Value =
        serde_json::from_str(&text).context("reading the running proxy's /routes")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", render_status(&v));
    Ok(ExitCode::SUCCESS)
}

/// `tollgate status` as text: aliases, then one row per routing target.
fn render_status(v: &serde_json::Value) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let aliases = v["aliases"].as_object().cloned().unwrap_or_default();
    if aliases.is_empty() {
        out.push_str("aliases: none\n");
    } else {
        out.push_str("aliases:\n");
        for (name, a) in &aliases {
            let targets: Vec<&str> = a["targets"]
                .as_array()
                .map(|t| t.iter().filter_map(|x| x.as_str()).collect())
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "  {name} ({}): {}",
                a["policy"].as_str().unwrap_or("?"),
                targets.join(", ")
            );
        }
    }
    if let Some(d) = v["default_alias"].as_str() {
        let _ = writeln!(out, "auto → {d}");
    }
    let targets = v["targets"].as_array().cloned().unwrap_or_default();
    if targets.is_empty() {
        out.push_str("targets: none tried yet\n");
        return out;
    }
    let _ = writeln!(
        out,
        "\n{:<44} {:<10} {:>7} {:>12} {:>7} {:>10}",
        "TARGET", "BREAKER", "OPENED", "HALF-OPENED", "CLOSED", "TTFB"
    );
    for t in &targets {
        let ttfb = t["ttft_ms"]
            .as_f64()
            .map_or_else(|| "-".to_string(), |ms| format!("{ms:.1} ms"));
        let _ = writeln!(
            out,
            "{:<44} {:<10} {:>7} {:>12} {:>7} {:>10}",
            t["target"].as_str().unwrap_or("?"),
            t["state"].as_str().unwrap_or("?"),
            t["opened"].as_u64().unwrap_or(0),
            t["half_opened"].as_u64().unwrap_or(0),
            t["closed"].as_u64().unwrap_or(0),
            ttfb
        );
    }
    out
}

fn cache_purge(args: &ConfigArgs, account: Option<&str>) -> anyhow::Result<ExitCode> {
    let config = match config_for(args) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    if let Some(a) = account {
        tollgate::identity::check_name("--account", a).map_err(|e| anyhow::anyhow!(e.0))?;
    }
    let removed: u64 = match open_cache_store(&config)? {
        Some(store) => {
            let n = store.purge(account)?;
            store.maintain()?;
            store.flush()?;
            n
        }
        None => {
            let path = match account {
                Some(a) => format!("/cache/purge?account={a}"),
                None => "/cache/purge".to_string(),
            };
            let text = post_admin(running_admin(&config)?, &path)?;
            let v: serde_json::Value =
                serde_json::from_str(&text).context("reading the running proxy's answer")?;
            v.get("removed").and_then(|n| n.as_u64()).unwrap_or(0)
        }
    };
    match account {
        Some(a) => println!("removed {removed} cached answers of account {a}"),
        None => println!("removed {removed} cached answers"),
    }
    Ok(ExitCode::SUCCESS)
}

fn fetch_admin_usage(admin: std::net::SocketAddr, by: &str) -> anyhow::Result<String> {
    fetch_admin(admin, &format!("/usage?by={by}"))
}

fn fetch_admin(admin: std::net::SocketAddr, path: &str) -> anyhow::Result<String> {
    admin_call(admin, reqwest::Method::GET, path)
}

fn post_admin(admin: std::net::SocketAddr, path: &str) -> anyhow::Result<String> {
    admin_call(admin, reqwest::Method::POST, path)
}

/// One request to the running proxy's admin listener; its body on success.
fn admin_call(
    admin: std::net::SocketAddr,
    method: reqwest::Method,
    path: &str,
) -> anyhow::Result<String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let url = format!("http://{admin}{path}");
        let response = reqwest::Client::new()
            .request(method, &url)
            .send()
            .await
            .with_context(|| format!("asking the running proxy at {url}"))?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            anyhow::bail!("the running proxy answered {status}: {text}");
        }
        Ok(text)
    })
}
