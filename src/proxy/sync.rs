//! Sync: with `control_url`, the sidecar serves what the control endpoint
//! says. At start it pulls a snapshot (or, with the control endpoint
//! unreachable, opens the last one it sealed in its data dir); then a
//! background long poll applies each change as it lands. What a snapshot
//! overrides, per request and without a lock on the request path:
//!
//! - gateway keys: the control endpoint's replace `[[gateway_keys]]`;
//! - provider keys: an account's BYOK key for a provider replaces the
//!   provider's own key for that account's requests;
//! - budgets: the control endpoint's join the config's (a synced budget
//!   never replaces a local one of the same name);
//! - the cache: an account whose plan has none is never served from it;
//! - batches: an account whose plan has no batch access gets 403 from the
//!   batch APIs;
//! - rate limits: each account's plan rpm / tpm join the config's limits;
//! - model aliases: the control endpoint's join the config's `[aliases.*]`
//!   (a local alias keeps its name).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::config::ControlLink;
use crate::keys::{AcceptMode, GatewayKey, KeyRing};
use crate::metrics::Metrics;
use crate::secret::Secret;
use crate::snapshot::Snapshot;

/// The sealed snapshot in the data dir.
pub const SNAPSHOT_FILE: &str = "control-snapshot";
/// How long a long poll may wait for a change.
const WAIT: Duration = Duration::from_secs(25);
/// How long the first pull at start may take before the sealed snapshot is used.
const START_TIMEOUT: Duration = Duration::from_secs(3);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Why a sync failed. Never carries a secret.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("the control endpoint is unreachable: {0}")]
    Send(String),
    #[error("the control endpoint answered {0}")]
    Status(u16),
    #[error("the snapshot does not decode: {0}")]
    Decode(String),
    #[error("the sealed snapshot: {0}")]
    Sealed(#[from] crate::snapshot::SnapshotError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// What the current snapshot says, ready for the request path.
struct Applied {
    version: u64,
    keys: Arc<KeyRing>,
    /// account → provider → the account's own key (nested so that a
    /// lookup on the request path allocates nothing).
    provider_keys: HashMap<String, HashMap<String, Arc<Secret>>>,
    /// Accounts whose plan has no cache.
    no_cache: std::collections::HashSet<String>,
    /// Accounts whose plan has no batch access.
    no_batch: std::collections::HashSet<String>,
    /// The config's rate limits and the plans' per-account rpm / tpm.
    limiter: Arc<crate::limit::Limiter>,
}

/// The gateway keys and provider keys in force: the local config's, or a
/// snapshot's once one is applied.
pub struct Fleet {
    current: ArcSwap<Applied>,
    accept: AcceptMode,
    /// The config's rate limits (gateway keys' own included).
    local_rules: Vec<crate::limit::Rule>,
    /// Where synced budgets go.
    ledger: Arc<crate::budget::Ledger>,
    /// Where synced aliases go.
    router: Arc<crate::route::Router>,
}

impl Fleet {
    /// Standalone: the config's gateway keys, rate limits and budgets, no BYOK.
    pub fn new(
        local_keys: KeyRing,
        local_rules: Vec<crate::limit::Rule>,
        ledger: Arc<crate::budget::Ledger>,
        router: Arc<crate::route::Router>,
    ) -> Fleet {
        Fleet {
            ledger,
            router,
            accept: local_keys.accept(),
            current: ArcSwap::from_pointee(Applied {
                version: 0,
                keys: Arc::new(local_keys),
                provider_keys: HashMap::new(),
                no_cache: Default::default(),
                no_batch: Default::default(),
                limiter: Arc::new(crate::limit::Limiter::new(local_rules.clone())),
            }),
            local_rules,
        }
    }

    /// The gateway keys in force.
    pub fn keyring(&self) -> Arc<KeyRing> {
        self.current.load().keys.clone()
    }

    /// `account`'s own key for `provider`, if the control endpoint holds one.
    pub fn provider_key(&self, account: &str, provider: &str) -> Option<Arc<Secret>> {
        self.current
            .load()
            .provider_keys
            .get(account)?
            .get(provider)
            .cloned()
    }

    /// The rate limiter in force.
    pub fn limiter(&self) -> Arc<crate::limit::Limiter> {
        self.current.load().limiter.clone()
    }

    /// Whether `account`'s plan leaves the exact cache out.
    pub fn cache_off(&self, account: &str) -> bool {
        let current = self.current.load();
        !current.no_cache.is_empty() && current.no_cache.contains(account)
    }

    /// Whether `account`'s plan leaves the batch APIs out.
    pub fn batch_off(&self, account: &str) -> bool {
        let current = self.current.load();
        !current.no_batch.is_empty() && current.no_batch.contains(account)
    }

    /// The version in force (0: none).
    pub fn version(&self) -> u64 {
        self.current.load().version
    }

    /// Puts `snap` in force.
    pub fn apply(&self, snap: &Snapshot) {
        let mut keys = Vec::new();
        let mut provider_keys = HashMap::new();
        let no_cache = snap
            .accounts
            .iter()
            .filter(|a| !a.plan.cache)
            .map(|a| a.name.clone())
            .collect();
        let no_batch = snap
            .accounts
            .iter()
            .filter(|a| !a.plan.batch)
            .map(|a| a.name.clone())
            .collect();
        for a in &snap.accounts {
            for k in &a.gateway_keys {
                match crate::keys::parse_sha256_hex(&k.sha256) {
                    Some(sha256) => keys.push(GatewayKey {
                        name: k.name.clone(),
                        account: a.name.clone(),
                        sha256,
                        rpm: None,
                        tpm: None,
                    }),
                    None => {
                        tracing::warn!(account = %a.name, key = %k.name, "a synced gateway key has no valid hash; skipped")
                    }
                }
            }
            for p in &a.provider_keys {
                provider_keys
                    .entry(a.name.clone())
                    .or_insert_with(HashMap::new)
                    .insert(p.provider.clone(), Arc::new(Secret::new(p.key.clone())));
            }
        }
        let mut budgets = Vec::new();
        for b in &snap.budgets {
            let (Some(period), on) = (
                crate::budget::Period::parse(&b.period),
                match b.on_insufficient.as_str() {
                    "clamp" => crate::budget::OnInsufficient::Clamp,
                    _ => crate::budget::OnInsufficient::Deny,
                },
            ) else {
                tracing::warn!(budget = %b.name, period = %b.period, "a synced budget has an unknown period; skipped");
                continue;
            };
            budgets.push(crate::budget::Budget {
                name: b.name.clone(),
                scope: crate::scope::Scope::Account(b.account.clone()),
                period,
                limit_nusd: b.limit_nusd,
                soft_thresholds: Vec::new(),
                alert_webhook: None,
                on_insufficient: on,
                // Day and month budgets are spent from leases; a
                // per-request ceiling needs no coordination.
                lease: (period != crate::budget::Period::Request).then_some(
                    match b.on_control_unreachable.as_str() {
                        "allow" => crate::budget::OnUnreachable::Allow,
                        _ => crate::budget::OnUnreachable::Deny,
                    },
                ),
                retired: false,
            });
        }
        self.ledger.sync_budgets(budgets);
        let shadowed = self
            .router
            .set_synced_aliases(synced_aliases(&snap.aliases));
        if !shadowed.is_empty() {
            tracing::warn!(aliases = ?shadowed, "synced aliases with the name of a local one are not used (the config's wins)");
        }
        let keys = if snap.gateway_keys_required {
            KeyRing::required(keys, self.accept)
        } else {
            KeyRing::new(keys, self.accept)
        };
        // Plans' rpm / tpm per account join the config's limits; the
        // windows of rules the snapshot left unchanged carry over.
        let mut rules = self.local_rules.clone();
        rules.extend(
            snap.accounts
                .iter()
                .filter(|a| a.plan.rpm.is_some() || a.plan.tpm.is_some())
                .map(|a| crate::limit::Rule {
                    scope: crate::limit::RuleScope::Scope(crate::scope::Scope::Account(
                        a.name.clone(),
                    )),
                    rpm: a.plan.rpm,
                    tpm: a.plan.tpm,
                }),
        );
        self.current.store(Arc::new(Applied {
            version: snap.version,
            keys: Arc::new(keys),
            provider_keys,
            no_cache,
            no_batch,
            limiter: Arc::new(self.current.load().limiter.succeed(rules)),
        }));
    }
}

/// The snapshot's aliases the router can use; one that does not parse
/// (a newer control endpoint's policy, say) is skipped with a warning.
fn synced_aliases(
    synced: &[crate::snapshot::SyncedAlias],
) -> std::collections::BTreeMap<String, crate::route::Alias> {
    use crate::route::{Alias, AliasTarget, Policy, Target};
    let mut out = std::collections::BTreeMap::new();
    for a in synced {
        let Some(policy) = Policy::parse(&a.policy) else {
            tracing::warn!(alias = %a.name, policy = %a.policy, "a synced alias has an unknown policy; skipped");
            continue;
        };
        let targets: Result<Vec<AliasTarget>, String> = a
            .targets
            .iter()
            .map(|t| {
                Ok(AliasTarget {
                    target: Target::parse(&t.target)?,
                    max_tokens: t.max_tokens,
                })
            })
            .collect();
        match targets {
            Ok(targets) if !targets.is_empty() => {
                out.insert(a.name.clone(), Alias { policy, targets });
            }
            Ok(_) => tracing::warn!(alias = %a.name, "a synced alias has no targets; skipped"),
            Err(e) => {
                tracing::warn!(alias = %a.name, error = %e, "a synced alias has a bad target; skipped")
            }
        }
    }
    out
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SyncError + '_ {
    move |source| SyncError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Writes `snap` sealed under `credential`, atomically, 0600.
pub fn persist(data_dir: &Path, credential: &Secret, snap: &Snapshot) -> Result<(), SyncError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let sealed = snap.seal(credential.expose())?;
    let path = data_dir.join(SNAPSHOT_FILE);
    let tmp: PathBuf = data_dir.join(format!("{SNAPSHOT_FILE}.tmp"));
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    f.write_all(&sealed).map_err(io_err(&tmp))?;
    f.sync_data().map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io_err(&path))
}

/// The snapshot sealed in `data_dir`, if any.
pub fn load(data_dir: &Path, credential: &Secret) -> Result<Option<Snapshot>, SyncError> {
    let path = data_dir.join(SNAPSHOT_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => Ok(Some(Snapshot::open(&bytes, credential.expose())?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(&path)(e)),
    }
}

/// One sync call: at once (`seen` = None) or a long poll.
async fn fetch(
    client: &reqwest::Client,
    link: &ControlLink,
    seen: Option<u64>,
) -> Result<Snapshot, SyncError> {
    let url = match seen {
        Some(v) => format!(
            "{}/api/v1/sync?version={v}&wait={}",
            link.url,
            WAIT.as_secs()
        ),
        None => format!("{}/api/v1/sync", link.url),
    };
    let resp = client
        .get(url)
        .bearer_auth(link.credential.expose())
        .send()
        .await
        .map_err(|e| SyncError::Send(e.without_url().to_string()))?;
    if !resp.status().is_success() {
        return Err(SyncError::Status(resp.status().as_u16()));
    }
    let body = resp
        .bytes()
        .await
        .map_err(|e| SyncError::Send(e.without_url().to_string()))?;
    serde_json::from_slice(&body).map_err(|e| SyncError::Decode(e.to_string()))
}

fn client(timeout: Duration) -> Result<reqwest::Client, SyncError> {
    reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(|e| SyncError::Send(e.to_string()))
}

/// At start: the control endpoint's snapshot, else the sealed one; puts
/// it in force and says where it came from. `Ok(None)`: neither exists
/// (the local config alone is in force).
pub fn start(
    fleet: &Fleet,
    link: &ControlLink,
    data_dir: &Path,
    metrics: &Metrics,
) -> Result<Option<&'static str>, SyncError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| SyncError::Send(e.to_string()))?;
    let pulled = runtime.block_on(async {
        let client = client(START_TIMEOUT)?;
        fetch(&client, link, None).await
    });
    let (snap, source) = match pulled {
        Ok(snap) => {
            persist(data_dir, &link.credential, &snap)?;
            (snap, "the control endpoint")
        }
        Err(e) => {
            metrics.sync_errors.inc();
            tracing::warn!(error = %e, "cannot sync at start; trying the sealed snapshot");
            match load(data_dir, &link.credential)? {
                Some(snap) => (snap, "the sealed snapshot in the data dir"),
                None => return Ok(None),
            }
        }
    };
    fleet.apply(&snap);
    metrics.sync_version.set(snap.version as i64);
    Ok(Some(source))
}

/// The long-poll background service.
pub struct SyncService {
    pub fleet: Arc<Fleet>,
    pub link: ControlLink,
    pub data_dir: PathBuf,
    pub metrics: Metrics,
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for SyncService {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let client = match client(WAIT + Duration::from_secs(10)) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "sync is off: no HTTP client");
                return;
            }
        };
        let mut backoff = Duration::from_secs(1);
        loop {
            let seen = self.fleet.version();
            let result = tokio::select! {
                r = fetch(&client, &self.link, (seen > 0).then_some(seen)) => r,
                _ = shutdown.changed() => return,
            };
            let wait = match result {
                Ok(snap) => {
                    backoff = Duration::from_secs(1);
                    if snap.version != seen {
                        self.fleet.apply(&snap);
                        self.metrics.sync_version.set(snap.version as i64);
                        tracing::info!(
                            version = snap.version,
                            "applied the control endpoint's snapshot"
                        );
                        let (dir, cred) = (self.data_dir.clone(), self.link.credential.clone());
                        let written =
                            tokio::task::spawn_blocking(move || persist(&dir, &cred, &snap)).await;
                        if let Ok(Err(e)) = written {
                            tracing::warn!(error = %e, "sealing the snapshot to disk failed");
                        }
                    }
                    Duration::ZERO
                }
                Err(e) => {
                    self.metrics.sync_errors.inc();
                    tracing::warn!(error = %e, retry_in = ?backoff, "sync with the control endpoint failed");
                    let w = backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    w
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
