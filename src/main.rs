//! `tollgate`: the CLI. Thin: parse flags, load the config, build the
//! services, hand them to pingora.

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
use tollgate::config::{self, Config, Flags, Sources};
use tollgate::meter::outbox::{self, Outbox};
use tollgate::meter::recorder::Recorder;
use tollgate::metrics::Metrics;
use tollgate::proxy::lifecycle::{InFlight, Shutdown};
use tollgate::proxy::{State, Tollgate};
use tollgate::usage_report::{GroupBy, UsageReport};

/// Exit status for a bad configuration (EX_CONFIG is 78; the contract says 64, EX_USAGE).
const EXIT_BAD_CONFIG: u8 = 64;
/// Page cache of the embedded store.
const SLED_CACHE_BYTES: u64 = 32 * 1024 * 1024;

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
    /// Group by these dimensions: account, model, day, provider, status.
    #[arg(long, default_value = "account,model,day")]
    by: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command {
        Command::Proxy(args) => proxy(args),
        Command::Usage(args) => usage(args),
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
    tracing_subscriber::fmt()
        .with_env_filter(env_filter)
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

fn proxy(args: ProxyArgs) -> anyhow::Result<ExitCode> {
    let config = match load_config(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tollgate: invalid configuration:\n{e}");
            return Ok(ExitCode::from(EXIT_BAD_CONFIG));
        }
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
    for addr in std::iter::once(config.listen).chain(config.admin_listen) {
        std::net::TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    }
    let metrics = Metrics::new().context("registering metrics")?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data_dir {}", config.data_dir.display()))?;
    let db = sled::Config::new()
        .path(&config.data_dir)
        // sled's default page cache is 1 GiB: far more than a sidecar should hold.
        .cache_capacity(SLED_CACHE_BYTES)
        .open()
        .with_context(|| {
            format!(
                "opening the store in {} (is another tollgate using it?)",
                config.data_dir.display()
            )
        })?;
    let outbox = Outbox::open(&db, config.outbox.retention, metrics.outbox.clone())
        .context("opening the usage outbox")?;
    let recorder = Arc::new(Recorder::new(
        config.prices.clone(),
        outbox.clone(),
        metrics.clone(),
        config.outbox.sync,
    ));
    let in_flight = InFlight::new(metrics.in_flight.clone());
    let state = Arc::new(State::new(
        &config,
        recorder,
        metrics.clone(),
        in_flight.clone(),
    ));

    let conf = ServerConf {
        threads: config.threads,
        // tollgate drains in its own SIGTERM handler (see proxy::lifecycle).
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let mut proxy = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        Tollgate::new(state),
        "tollgate proxy",
    );
    proxy.add_tcp(&config.listen.to_string());
    server.add_service(proxy);

    if let Some(addr) = config.admin_listen {
        let admin = Admin {
            metrics: metrics.clone(),
            outbox: outbox.clone(),
            in_flight: in_flight.clone(),
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
    db.flush().context("final flush of the store")?;
    tracing::info!("tollgate stopped");
    Ok(())
}

fn usage(args: UsageArgs) -> anyhow::Result<ExitCode> {
    let config = match load_config(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tollgate: invalid configuration:\n{e}");
            return Ok(ExitCode::from(EXIT_BAD_CONFIG));
        }
    };
    let by = GroupBy::parse(&args.by)?;
    if !config.data_dir.exists() {
        anyhow::bail!(
            "no ledger at {} (has the proxy run here?)",
            config.data_dir.display()
        );
    }
    match sled::Config::new().path(&config.data_dir).open() {
        Ok(db) => {
            let tree = db.open_tree(outbox::TREE)?;
            let report = UsageReport::from_events(outbox::read_events(&tree), &by)?;
            print!("{}", report.render());
            Ok(ExitCode::SUCCESS)
        }
        Err(sled::Error::Io(e))
            if e.kind() == std::io::ErrorKind::WouldBlock || e.to_string().contains("lock") =>
        {
            // A running proxy holds the store: ask it.
            let admin = config
                .admin_listen
                .context("the store is in use by a running proxy and its admin listener is off")?;
            let text = fetch_admin_usage(admin, &args.by)?;
            print!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            Err(e).with_context(|| format!("opening the store in {}", config.data_dir.display()))
        }
    }
}

fn fetch_admin_usage(admin: std::net::SocketAddr, by: &str) -> anyhow::Result<String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let url = format!("http://{admin}/usage?by={by}");
        let response = reqwest::get(&url)
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
