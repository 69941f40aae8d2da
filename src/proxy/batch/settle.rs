//! Settlement: the task that polls the tracked batches, reads the
//! results of an ended one once (streamed, line by line) and hands them to
//! [`Batches`](super::Batches) to record and settle.

use bytes::{Bytes, BytesMut};
use pingora::http::RequestHeader;

use super::{now_us, BatchError};
use crate::batch::{BatchRecord, BatchState, Settlement};
use crate::dialect::anthropic::{self, batch as wire};
use crate::proxy::error::ProxyError;
use crate::proxy::forward::{self, UpstreamCall};
use crate::proxy::ingress::Routes;
use crate::proxy::State;

/// The `user-agent` of tollgate's own batch calls (polls, results).
pub const SETTLEMENT_AGENT: &str = concat!(
    "tollgate/",
    env!("CARGO_PKG_VERSION"),
    " (batch settlement)"
);

/// The longest results line read (one item's answer).
pub(super) const MAX_RESULT_LINE: usize = 64 << 20;

/// Records past `batches.retention` are looked for at most this often
/// (a quarter of the retention when that is shorter).
const PRUNE_AT_MOST_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// Polls and settles the tracked batches: every `batches.poll_interval`,
/// and as soon as one is woken (a client saw it ended, or it was left
/// mid-submit or mid-settlement by an earlier run). One task, so a batch is
/// never settled twice at once.
pub struct BatchService {
    pub state: std::sync::Arc<State>,
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for BatchService {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let batches = &self.state.batches;
        let taken = batches
            .woken
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let Some(mut woken) = taken else {
            return;
        };
        let mut every = tokio::time::interval(batches.config.poll_interval);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Pruning decodes every kept record: not at each poll, but often
        // enough that nothing outlives the retention by much.
        let prune_every = (batches.config.retention / 4).min(PRUNE_AT_MOST_EVERY);
        let mut pruned: Option<std::time::Instant> = None;
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                Some(key) = woken.recv() => run(&self.state, &key, true).await,
                _ = every.tick() => {
                    for key in batches.keys() {
                        run(&self.state, &key, false).await;
                    }
                    if pruned.is_none_or(|at| at.elapsed() >= prune_every) {
                        match batches.prune(super::now_us()).await {
                            Ok(_) => pruned = Some(std::time::Instant::now()),
                            Err(e) => tracing::warn!(error = %e, "pruning old batch records failed; retried at the next poll"),
                        }
                    }
                }
            }
        }
    }
}

/// Moves one tracked batch on; failures are logged and retried later.
async fn run(state: &State, key: &str, ended: bool) {
    if let Err(e) = step(state, key, ended).await {
        tracing::warn!(batch = %key, error = %e, "batch not settled yet; retried on the next poll");
    }
}

async fn step(state: &State, key: &str, ended: bool) -> Result<(), BatchError> {
    let b = &state.batches;
    let Some(mut record) = b.load(key).await? else {
        b.untrack(key);
        return Ok(());
    };
    match record.state {
        BatchState::Submitting => b.interrupt(record).await,
        BatchState::Open => {
            let results = if record.endpoint.is_some() {
                // OpenAI: the batch object names the files to read.
                match super::openai::results_if_ended(state, &record).await? {
                    Some(results) => results,
                    None => return Ok(()),
                }
            } else {
                if !ended && !has_ended(state, &record).await? {
                    return Ok(());
                }
                read_results(state, &record).await?
            };
            record.results = results;
            record.settled_ts = Some(now_us());
            record.state = BatchState::Settling;
            b.put(&record, None).await?;
            b.finish(record).await
        }
        BatchState::Settling => b.finish(record).await,
        BatchState::Settled => {
            b.untrack(key);
            Ok(())
        }
    }
}

/// `GET {path}` at the batch's provider, with the key tollgate injects
/// (the account's own, else the provider's); never a client's credential.
pub(super) async fn get(
    state: &State,
    record: &BatchRecord,
    path: &str,
) -> Result<UpstreamCall, BatchError> {
    get_for(state, &record.provider, &record.account, path).await
}

/// `GET {path}` at `provider` on `account`'s behalf, as [`get`].
pub(super) async fn get_for(
    state: &State,
    provider: &str,
    account: &str,
    path: &str,
) -> Result<UpstreamCall, BatchError> {
    let provider = state
        .routes
        .provider(provider)
        .ok_or_else(|| BatchError::NoProvider(provider.to_string()))?
        .clone();
    let route = Routes::api_route(&provider, path);
    let upstream = |e: ProxyError| BatchError::Upstream(e.to_string());
    let mut client = RequestHeader::build("GET", route.upstream_path.as_bytes(), None)
        .map_err(|e| BatchError::Upstream(e.to_string()))?;
    if provider.dialect == crate::dialect::Dialect::Anthropic {
        client
            .insert_header(anthropic::VERSION, anthropic::API_VERSION)
            .map_err(|e| BatchError::Upstream(e.to_string()))?;
    }
    client
        .insert_header(http::header::USER_AGENT, SETTLEMENT_AGENT)
        .map_err(|e| BatchError::Upstream(e.to_string()))?;
    let byok = state.fleet.provider_key(account, &provider.name);
    let key = byok.as_deref().or(provider.api_key.as_ref());
    let req = forward::build_request(
        &route,
        &client,
        0,
        state.fleet.keyring().enabled(),
        key,
        None,
    )
    .map_err(upstream)?;
    let mut call = state
        .upstreams
        .send(&provider, req, &Bytes::new())
        .await
        .map_err(upstream)?;
    call.session
        .set_read_timeout(Some(state.upstreams.idle_timeout()));
    Ok(call)
}

/// `GET {path}` of a file to stream (results): the call, once it answered 200.
pub(super) async fn download(
    state: &State,
    record: &BatchRecord,
    path: &str,
    what: &'static str,
) -> Result<UpstreamCall, BatchError> {
    let mut call = get(state, record, path).await?;
    let status = status_of(&call);
    if status != 200 {
        call.session.shutdown().await;
        return Err(BatchError::Status { status, what });
    }
    Ok(call)
}

/// `GET {path}`: the batch object at the provider, read whole.
pub(super) async fn retrieve(
    state: &State,
    record: &BatchRecord,
    path: &str,
) -> Result<BytesMut, BatchError> {
    let call = get(state, record, path).await?;
    let (status, body) = read_object(state, call).await?;
    if status != 200 {
        return Err(BatchError::Status {
            status,
            what: "a batch retrieve",
        });
    }
    Ok(body)
}

/// Reads a small answer (a batch object) whole: its status and body.
pub(super) async fn read_object(
    state: &State,
    mut call: UpstreamCall,
) -> Result<(u16, BytesMut), BatchError> {
    let status = status_of(&call);
    let mut body = BytesMut::new();
    while let Some(chunk) = call
        .session
        .read_response_body()
        .await
        .map_err(|e| BatchError::Upstream(e.to_string()))?
    {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_RESULT_LINE {
            return Err(BatchError::Upstream("the batch object is too large".into()));
        }
    }
    state.upstreams.release(call).await;
    Ok((status, body))
}

pub(super) fn status_of(call: &UpstreamCall) -> u16 {
    call.session
        .response_header()
        .map_or(0, |h| h.status.as_u16())
}

/// Asks the provider about an open Anthropic batch now (a client's read
/// of it): an ended one is queued for settlement at once, as when a
/// client's own retrieve shows it ended. Returns whether it has ended
/// (false for an OpenAI batch: the settlement task asks about those).
pub async fn refresh(state: &State, record: &BatchRecord) -> Result<bool, BatchError> {
    if record.state != BatchState::Open || record.endpoint.is_some() {
        return Ok(false);
    }
    let ended = has_ended(state, record).await?;
    let key = record.key();
    if ended && state.batches.lock().contains_key(&key) {
        state.batches.wake(key);
    }
    Ok(ended)
}

/// Whether the provider says the batch has ended.
async fn has_ended(state: &State, record: &BatchRecord) -> Result<bool, BatchError> {
    let Some(id) = &record.batch_id else {
        return Ok(false);
    };
    let body = retrieve(state, record, &format!("/v1/messages/batches/{id}")).await?;
    Ok(wire::batch_statuses(&body)
        .iter()
        .any(|s| s.ended && s.id == *id))
}

/// Reads the batch's results once, streaming line by line (never the whole
/// file in memory), into one settlement per item.
async fn read_results(
    state: &State,
    record: &BatchRecord,
) -> Result<Vec<crate::batch::ItemResult>, BatchError> {
    let Some(id) = &record.batch_id else {
        return Ok(Vec::new());
    };
    let path = format!("/v1/messages/batches/{id}/results");
    let mut call = download(state, record, &path, "a results download").await?;
    let prices = state.recorder.prices();
    let mut settlement = Settlement::new(record, prices);
    let mut line = BytesMut::new();
    let mut bad = 0usize;
    let mut take = |line: &[u8], settlement: &mut Settlement| {
        if let Err(e) = take_line(line, settlement) {
            bad += 1;
            tracing::warn!(batch = %id, error = %e, "unreadable results line; skipped");
        }
    };
    while let Some(chunk) = next_chunk(&mut call).await? {
        let mut rest = &chunk[..];
        while let Some(at) = memchr::memchr(b'\n', rest) {
            if line.is_empty() {
                take(&rest[..at], &mut settlement);
            } else {
                line.extend_from_slice(&rest[..at]);
                take(&line[..], &mut settlement);
                line.clear();
            }
            rest = &rest[at + 1..];
        }
        line.extend_from_slice(rest);
        if line.len() > MAX_RESULT_LINE {
            return Err(BatchError::Results("a results line is too long".into()));
        }
    }
    take(&line[..], &mut settlement);
    state.upstreams.release(call).await;
    if settlement.strays > 0 || bad > 0 {
        tracing::warn!(batch = %id, strays = settlement.strays, unreadable = bad, "results lines that match no item of the batch");
    }
    Ok(settlement.finish())
}

/// The next chunk of a download (`None`: its end).
pub(super) async fn next_chunk(call: &mut UpstreamCall) -> Result<Option<Bytes>, BatchError> {
    call.session
        .read_response_body()
        .await
        .map_err(|e| BatchError::Results(e.to_string()))
}

/// One line of a results file into the settlement (blank lines skipped).
fn take_line(line: &[u8], settlement: &mut Settlement<'_>) -> Result<(), wire::BatchError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    settlement.add(wire::parse_result_line(line)?);
    Ok(())
}
