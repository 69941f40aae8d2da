//! The OpenAI Batch API (`/v1/files` + `/v1/batches`) through the batch
//! stage: the same reservation, record and settlement as an Anthropic
//! Message Batch (see the parent module), over OpenAI's two-step flow. The
//! wire format is [`crate::dialect::openai::batch`].
//!
//! - **Upload** (`POST /v1/files`, `purpose=batch`): the file is read once
//!   as it passes (bounded by `batches.max_body_bytes`), every line checked
//!   (a bad one is a 400 in OpenAI's shape naming its line, before anything
//!   is sent) and priced as the same request sent alone would be, at its
//!   model's batch price. Nothing is reserved yet: a file is not a batch.
//!   Once the provider names the file, the priced items are stored under
//!   `provider/file id` ([`crate::batch::UploadedInput`], the store's
//!   `batch_inputs` tree), before the client sees the file object, so a
//!   create sent to this sidecar after a restart finds them. Uploads with
//!   another purpose pass through untouched.
//! - **Create** (`POST /v1/batches`): the file's items are looked up; a file
//!   this sidecar never saw (uploaded through another sidecar, or directly
//!   to the provider) is read from the provider once
//!   (`GET /v1/files/{id}/content`, streamed line by line, with the key
//!   tollgate injects) and priced the same way. The batch's `endpoint` must
//!   be the file's. Then, as for Anthropic: every item's worst case is
//!   reserved, all or nothing (402 naming the budget, nothing sent), and
//!   the record stored `Submitting` before the create leaves; the answer
//!   makes it `Open` under the provider's batch id or releases it.
//! - **Settlement**: once the batch object's status is terminal
//!   (`completed`, `failed`, `expired`, `cancelled`; seen by the poller or in
//!   a client's retrieve, list or cancel), its output and error files are
//!   read once each, streamed line by line, and every `custom_id` becomes
//!   one event: succeeded at its tokens × the model's batch price (cached
//!   input included), errored, cancelled and expired at 0, items in neither
//!   file (a batch that `failed` validation) as `missing` at 0.

use bytes::Bytes;

use super::settle::{download, get_for, next_chunk, retrieve, status_of, MAX_RESULT_LINE};
use super::{hold_and_record, load_from, now_us, price_item, put_in, BatchError, Batches, Pending};
use crate::batch::{BatchRecord, ItemResult, Settlement, UploadedInput};
use crate::dialect::openai::batch::{self as wire, BatchEndpoint};
use crate::dialect::Dialect;
use crate::identity::Identity;
use crate::meter::prices::PriceTable;
use crate::proxy::error::ProxyError;
use crate::proxy::ingress::{Endpoint, Route};
use crate::proxy::State;

/// The Files or Batch API call a request is (`None`: neither, or not an
/// OpenAI-compatible provider).
fn api_call<'a>(route: &'a Route, method: &http::Method) -> Option<wire::Call<'a>> {
    let path = api_path(route)?;
    path.call(method.as_str())
}

fn api_path(route: &Route) -> Option<wire::ApiPath<'_>> {
    if route.dialect() != Dialect::OpenAi || route.endpoint != Endpoint::Passthrough {
        return None;
    }
    let path = route
        .upstream_path
        .split_once('?')
        .map_or(route.upstream_path.as_str(), |(p, _)| p);
    wire::split_path(path).map(|(_, api)| api)
}

/// `POST …/v1/batches`.
pub fn is_create(route: &Route, method: &http::Method) -> bool {
    matches!(api_call(route, method), Some(wire::Call::CreateBatch))
}

/// `POST …/v1/files`.
pub fn is_upload(route: &Route, method: &http::Method) -> bool {
    matches!(api_call(route, method), Some(wire::Call::UploadFile))
}

/// A call whose answer is a batch or file object (or a page of batches)
/// that the stage reads: upload, create, retrieve, list, cancel. Never a
/// file's content (an output file is piped, however large).
pub fn answers_with_objects(route: &Route, method: &http::Method) -> bool {
    matches!(
        api_call(route, method),
        Some(
            wire::Call::UploadFile
                | wire::Call::CreateBatch
                | wire::Call::ListBatches
                | wire::Call::RetrieveBatch(_)
                | wire::Call::CancelBatch(_)
        )
    )
}

/// A Files API call (upload, retrieve, content, delete): it spends nothing
/// itself, so a budget does not refuse it (a batch's items are reserved at
/// its create).
pub fn is_files(route: &Route) -> bool {
    matches!(
        api_path(route),
        Some(wire::ApiPath::Files | wire::ApiPath::File(_) | wire::ApiPath::FileContent(_))
    )
}

/// The provider's id of the batch a create answered with.
pub(super) fn created_id(body: &[u8]) -> Option<String> {
    wire::parse_batch(body).ok().map(|b| b.id)
}

/// A batch input line's problem, in OpenAI's shape.
fn input_error(e: &wire::InputError) -> ProxyError {
    ProxyError::BatchInput {
        code: e.code(),
        param: e.param(),
        message: e.to_string(),
    }
}

/// A file id as the API spells them: one path segment, nothing to escape.
fn plain_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Prices the items a reader hands over, as they are read.
struct Pricer<'a> {
    prices: &'a PriceTable,
    default_max_tokens: u64,
    items: Vec<crate::batch::BatchItem>,
}

impl Pricer<'_> {
    fn visit(&mut self, item: &wire::BatchItem, body: &[u8]) {
        self.items.push(price_item(
            self.prices,
            item.custom_id.clone(),
            item.model.clone(),
            body,
            item.output_bound(self.default_max_tokens),
            item.choices,
        ));
    }
}

// === Upload ===

/// A `purpose=batch` upload on its way to the provider: its items, priced,
/// kept once the provider names the file.
pub struct PendingUpload {
    batches: std::sync::Arc<Batches>,
    input: UploadedInput,
}

/// Reads a `POST /v1/files` body once (off the async threads): a batch
/// input file is checked and priced per line; `None` for another purpose.
pub async fn read_upload(
    state: &State,
    id: &Identity,
    route: &Route,
    content_type: &str,
    body: &Bytes,
) -> Result<Option<PendingUpload>, ProxyError> {
    let recorder = state.recorder.clone();
    let default_max_tokens = state.budget_default_max_tokens;
    let (content_type, body) = (content_type.to_string(), body.clone());
    let read = tokio::task::spawn_blocking(move || {
        let mut pricer = Pricer {
            prices: recorder.prices(),
            default_max_tokens,
            items: Vec::new(),
        };
        let upload = wire::parse_upload_with(
            &content_type,
            body,
            wire::InputLimits::default(),
            &mut |item, raw| pricer.visit(item, raw),
        )?;
        Ok::<_, wire::UploadError>((upload, pricer.items))
    })
    .await
    .map_err(|e| ProxyError::Internal(format!("reading a batch upload: {e}")))?;
    let (upload, items) = read.map_err(|e| ProxyError::BatchInput {
        code: e.code(),
        param: e.param(),
        message: e.to_string(),
    })?;
    let Some(input) = upload.input else {
        return Ok(None);
    };
    Ok(Some(PendingUpload {
        batches: state.batches.clone(),
        input: UploadedInput {
            provider: route.provider.name.clone(),
            file_id: String::new(),
            endpoint: input.endpoint.as_url().to_string(),
            account: id.account.clone(),
            uploaded_ts: now_us(),
            items,
        },
    }))
}

impl PendingUpload {
    /// The provider's answer to the upload: a file it accepted is
    /// remembered under its id before the client sees it.
    pub async fn conclude(self, status: u16, body: &[u8]) {
        if !(200..300).contains(&status) {
            return;
        }
        let file = match wire::parse_file(body) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "a batch upload's answer is not a file object; a batch created over it reads the file from the provider");
                return;
            }
        };
        let mut input = self.input;
        input.file_id = file.id;
        let items = input.items.len();
        match self.batches.put_input(&input).await {
            Ok(()) => {
                tracing::debug!(file = %input.file_id, items, reserved_nusd = input.reserved_nusd(), "batch input file priced")
            }
            Err(e) => {
                tracing::warn!(file = %input.file_id, error = %e, "a batch input file could not be stored; a batch created over it reads the file from the provider")
            }
        }
    }
}

// === Create ===

/// Reserves an OpenAI batch create: the input file's items (stored at
/// upload, else read from the provider), all or nothing.
pub(super) async fn reserve(
    state: &State,
    id: &Identity,
    route: &Route,
    body: &Bytes,
) -> Result<Pending, ProxyError> {
    let create = wire::parse_create(body).map_err(|e| ProxyError::BatchInput {
        code: e.code(),
        param: e.param(),
        message: e.to_string(),
    })?;
    let file_id = create.input_file_id.as_str();
    if !plain_id(file_id) {
        return Err(ProxyError::BatchInput {
            code: "invalid_value",
            param: Some("input_file_id"),
            message: format!("invalid input_file_id {file_id:?}"),
        });
    }
    let provider = route.provider.name.as_str();
    let stored = state
        .batches
        .load_input(provider, file_id)
        .await
        .unwrap_or_else(|e| {
            tracing::warn!(file = %file_id, error = %e, "reading a stored batch input file failed; reading it from the provider");
            None
        });
    let input = match stored {
        Some(input) => input,
        None => fetch_input(state, id, route, file_id).await?,
    };
    let file_endpoint = BatchEndpoint::from_url(&input.endpoint);
    if file_endpoint != Some(create.endpoint) {
        return Err(input_error(&wire::InputError::EndpointMismatch {
            line: 1,
            url: input.endpoint.clone(),
            expected: create.endpoint,
        }));
    }
    hold_and_record(
        state,
        id,
        route,
        input.items,
        Some(create.endpoint.as_url().to_string()),
    )
    .await
}

/// Reads an input file this sidecar did not see uploaded from the
/// provider (streamed, line by line) and prices it as an upload is.
async fn fetch_input(
    state: &State,
    id: &Identity,
    route: &Route,
    file_id: &str,
) -> Result<UploadedInput, ProxyError> {
    let provider = route.provider.name.clone();
    let unreachable = |e: BatchError| ProxyError::UpstreamUnreachable {
        provider: provider.clone(),
        detail: format!("reading batch input file {file_id}: {e}"),
        sent: false,
    };
    let path = format!("/v1/files/{file_id}/content");
    let mut call = get_for(state, &provider, &id.account, &path)
        .await
        .map_err(unreachable)?;
    let status = status_of(&call);
    if status != 200 {
        call.session.shutdown().await;
        return Err(ProxyError::BatchInput {
            code: "invalid_input_file",
            param: Some("input_file_id"),
            message: format!(
                "the input file {file_id} could not be read from {provider} (it answered {status})"
            ),
        });
    }
    let mut pricer = Pricer {
        prices: state.recorder.prices(),
        default_max_tokens: state.budget_default_max_tokens,
        items: Vec::new(),
    };
    let mut reader = wire::InputReader::new(wire::InputLimits::default());
    while let Some(chunk) = next_chunk(&mut call).await.map_err(unreachable)? {
        reader
            .feed_with(&chunk, &mut |item, raw| pricer.visit(item, raw))
            .map_err(|e| input_error(&e))?;
    }
    let input = reader
        .finish_with(&mut |item, raw| pricer.visit(item, raw))
        .map_err(|e| input_error(&e))?;
    state.upstreams.release(call).await;
    tracing::info!(file = %file_id, items = pricer.items.len(), "a batch input file not uploaded through this sidecar was read from the provider");
    Ok(UploadedInput {
        provider,
        file_id: file_id.to_string(),
        endpoint: input.endpoint.as_url().to_string(),
        account: id.account.clone(),
        uploaded_ts: now_us(),
        items: pricer.items,
    })
}

// === Settlement ===

/// The settlement of every item, once the provider says the batch is
/// terminal (`None` while it runs): its output and error files read once
/// each, streamed.
pub(super) async fn results_if_ended(
    state: &State,
    record: &BatchRecord,
) -> Result<Option<Vec<ItemResult>>, BatchError> {
    let Some(id) = &record.batch_id else {
        return Ok(None);
    };
    let body = retrieve(state, record, &format!("/v1/batches/{id}")).await?;
    let batch = wire::parse_batch(&body).map_err(|e| BatchError::Results(e.to_string()))?;
    if !batch.status.is_terminal() {
        return Ok(None);
    }
    let endpoint = record
        .endpoint
        .as_deref()
        .and_then(BatchEndpoint::from_url)
        .ok_or_else(|| BatchError::Results(format!("unknown endpoint {:?}", record.endpoint)))?;
    let mut settlement = Settlement::new(record, state.recorder.prices());
    let mut unreadable = 0usize;
    for file in [&batch.output_file_id, &batch.error_file_id]
        .into_iter()
        .flatten()
    {
        unreadable += read_file(state, record, endpoint, file, &mut settlement).await?;
    }
    if settlement.strays > 0 || unreadable > 0 {
        tracing::warn!(batch = %id, strays = settlement.strays, unreadable, "result lines that match no item of the batch");
    }
    Ok(Some(settlement.finish()))
}

/// Reads one output or error file into the settlement, line by line;
/// returns how many lines could not be read.
async fn read_file(
    state: &State,
    record: &BatchRecord,
    endpoint: BatchEndpoint,
    file_id: &str,
    settlement: &mut Settlement<'_>,
) -> Result<usize, BatchError> {
    let path = format!("/v1/files/{file_id}/content");
    let mut call = download(
        state,
        record,
        &path,
        "a batch output or error file download",
    )
    .await?;
    let mut reader = wire::ResultsReader::new(endpoint, MAX_RESULT_LINE);
    let mut bad = 0usize;
    let mut take = |line: Result<wire::BatchResult, wire::ResultError>| match line {
        Ok(line) => settlement.add_openai(line),
        Err(e) => {
            bad += 1;
            tracing::warn!(file = %file_id, error = %e, "unreadable result line; skipped");
        }
    };
    while let Some(chunk) = next_chunk(&mut call).await? {
        reader.feed(&chunk, &mut take);
    }
    reader.finish(&mut take);
    state.upstreams.release(call).await;
    Ok(bad)
}

// === impl Batches ===

impl Batches {
    /// An answer holding OpenAI batch objects passed through (retrieve,
    /// list, cancel): a tracked batch shown terminal is settled now.
    pub fn observe_openai(&self, provider: &str, body: &[u8]) {
        let shown = match wire::parse_batch(body) {
            Ok(one) => vec![one],
            Err(_) => wire::parse_batch_list(body).unwrap_or_default(),
        };
        for batch in shown.iter().filter(|b| b.status.is_terminal()) {
            let key = crate::batch::key(provider, &batch.id);
            if self.lock().contains_key(&key) {
                self.wake(key);
            }
        }
    }

    async fn put_input(&self, input: &UploadedInput) -> Result<(), BatchError> {
        match self.inputs.clone() {
            Some(store) => put_in(store, input.key(), input, None).await,
            None => Ok(()),
        }
    }

    async fn load_input(
        &self,
        provider: &str,
        file_id: &str,
    ) -> Result<Option<UploadedInput>, BatchError> {
        match self.inputs.clone() {
            Some(store) => load_from(store, crate::batch::key(provider, file_id)).await,
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_ids_are_one_plain_segment() {
        assert!(plain_id("file-abc_123"));
        assert!(!plain_id(""));
        assert!(!plain_id("file-1/../x"));
        assert!(!plain_id("file-1?purpose=x"));
        assert!(!plain_id("file%2F1"));
    }
}
