//! The JSON objects of the Batch and Files APIs: a batch create request,
//! batch objects (alone or in a list page) and file objects
//! (providers.md §8.3; **[O-SDK3 `types/batch.py`,
//! `batch_create_params.py`, `batch_request_counts.py`]**).
//!
//! Only what tollgate acts on is read; every other field is ignored, and a
//! status this code does not know reads as [`BatchStatus::Unknown`] (not
//! terminal), so a newer API does not break retrieval.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::BatchEndpoint;
use crate::dialect::openai::responses::WireUsage;
use crate::dialect::usage::Usage;

/// A body that is not the object expected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ObjectError {
    /// Not JSON, not an object, or a field of the wrong type.
    #[error("{0}")]
    BadJson(String),
    /// A required field is absent, null or empty.
    #[error("missing required parameter '{0}'")]
    Missing(&'static str),
    /// A batch `endpoint` tollgate does not meter.
    #[error(
        "endpoint {0:?} is not supported; use /v1/chat/completions, /v1/responses or \
         /v1/embeddings"
    )]
    UnsupportedEndpoint(String),
}

impl ObjectError {
    /// The `error.code` for it.
    pub fn code(&self) -> &'static str {
        match self {
            ObjectError::BadJson(_) => "invalid_json",
            ObjectError::Missing(_) => "missing_required_parameter",
            ObjectError::UnsupportedEndpoint(_) => "invalid_value",
        }
    }

    /// OpenAI's `error.param` for it.
    pub fn param(&self) -> Option<&'static str> {
        match self {
            ObjectError::BadJson(_) => None,
            ObjectError::Missing(field) => Some(field),
            ObjectError::UnsupportedEndpoint(_) => Some("endpoint"),
        }
    }
}

// === POST /v1/batches ===

/// A `POST /v1/batches` body.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchCreate {
    /// The uploaded input file.
    pub input_file_id: String,
    /// The endpoint every line of the file names.
    pub endpoint: BatchEndpoint,
    /// `24h` (the only window the API offers today); passed on as sent.
    pub completion_window: String,
    /// The caller's metadata, if any.
    pub metadata: Option<Map<String, Value>>,
}

#[derive(Deserialize)]
struct WireCreate<'a> {
    #[serde(borrow, default)]
    input_file_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    endpoint: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    completion_window: Option<Cow<'a, str>>,
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
}

/// Reads a `POST /v1/batches` body.
pub fn parse_create(body: &[u8]) -> Result<BatchCreate, ObjectError> {
    let wire: WireCreate<'_> = object(body)?;
    let present = |v: Option<Cow<'_, str>>, name| {
        v.filter(|s| !s.is_empty())
            .map(Cow::into_owned)
            .ok_or(ObjectError::Missing(name))
    };
    let input_file_id = present(wire.input_file_id, "input_file_id")?;
    let endpoint = present(wire.endpoint, "endpoint")?;
    let completion_window = present(wire.completion_window, "completion_window")?;
    let endpoint = BatchEndpoint::from_url(&endpoint)
        .ok_or_else(|| ObjectError::UnsupportedEndpoint(endpoint.clone()))?;
    Ok(BatchCreate {
        input_file_id,
        endpoint,
        completion_window,
        metadata: wire.metadata,
    })
}

// === Batch objects ===

/// Where a batch is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchStatus {
    /// The input file is being checked.
    Validating,
    /// The input file was invalid (`errors`); nothing ran.
    Failed,
    /// Running.
    InProgress,
    /// Items done; the output and error files are being written.
    Finalizing,
    /// Ended; output and error files are ready.
    Completed,
    /// The completion window passed; what finished is in the files.
    Expired,
    /// A cancel was asked for; running items are being stopped.
    Cancelling,
    /// Cancelled; what finished is in the files.
    Cancelled,
    /// A status this code does not know.
    #[serde(other)]
    Unknown,
}

impl BatchStatus {
    /// The batch will not change any more: its output and error files (if
    /// any) are final and can be settled.
    pub fn is_terminal(self) -> bool {
        match self {
            BatchStatus::Failed
            | BatchStatus::Completed
            | BatchStatus::Expired
            | BatchStatus::Cancelled => true,
            BatchStatus::Validating
            | BatchStatus::InProgress
            | BatchStatus::Finalizing
            | BatchStatus::Cancelling
            | BatchStatus::Unknown => false,
        }
    }
}

/// `request_counts` of a batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct RequestCounts {
    /// Requests in the batch.
    pub total: u64,
    /// Requests that succeeded.
    pub completed: u64,
    /// Requests that did not (refused, and with the fake at least, also
    /// cancelled and expired ones).
    pub failed: u64,
}

/// What tollgate reads of a batch object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// `batch_…`.
    pub id: String,
    /// Its status.
    pub status: BatchStatus,
    /// The endpoint its items call, as the API spells it (`None`: absent).
    pub endpoint: Option<String>,
    /// The input file.
    pub input_file_id: Option<String>,
    /// The output file (the items that succeeded, see
    /// [`super::results`]); set once the batch ends.
    pub output_file_id: Option<String>,
    /// The error file (items refused, cancelled or expired); set once the
    /// batch ends, if any item did not succeed.
    pub error_file_id: Option<String>,
    /// Counts per outcome.
    pub request_counts: Option<RequestCounts>,
    /// The batch's total `usage` (batches created after 2025-09-07), in
    /// Responses terms; for reconciliation, not settlement.
    pub usage: Option<Usage>,
}

impl Batch {
    /// The endpoint its items call, when tollgate meters it.
    pub fn endpoint_kind(&self) -> Option<BatchEndpoint> {
        self.endpoint.as_deref().and_then(BatchEndpoint::from_url)
    }
}

#[derive(Deserialize)]
struct WireBatch<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    object: Option<Cow<'a, str>>,
    #[serde(default)]
    status: Option<BatchStatus>,
    #[serde(borrow, default)]
    endpoint: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    input_file_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    output_file_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    error_file_id: Option<Cow<'a, str>>,
    #[serde(default)]
    request_counts: Option<RequestCounts>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

impl WireBatch<'_> {
    fn batch(self) -> Result<Batch, ObjectError> {
        if self.object.as_deref().is_some_and(|o| o != "batch") {
            return Err(ObjectError::BadJson("not a batch object".into()));
        }
        let owned = |v: Option<Cow<'_, str>>| v.filter(|s| !s.is_empty()).map(Cow::into_owned);
        Ok(Batch {
            id: owned(self.id).ok_or(ObjectError::Missing("id"))?,
            status: self.status.ok_or(ObjectError::Missing("status"))?,
            endpoint: owned(self.endpoint),
            input_file_id: owned(self.input_file_id),
            output_file_id: owned(self.output_file_id),
            error_file_id: owned(self.error_file_id),
            request_counts: self.request_counts,
            usage: self.usage.map(|u| u.usage()),
        })
    }
}

/// Reads a batch object (the answer to create, retrieve and cancel).
pub fn parse_batch(body: &[u8]) -> Result<Batch, ObjectError> {
    object::<WireBatch<'_>>(body)?.batch()
}

/// Reads a list page (`GET /v1/batches`): its batches, in page order.
pub fn parse_batch_list(body: &[u8]) -> Result<Vec<Batch>, ObjectError> {
    #[derive(Deserialize)]
    struct Page<'a> {
        #[serde(borrow)]
        data: Option<Vec<WireBatch<'a>>>,
    }
    let page: Page<'_> = object(body)?;
    page.data
        .ok_or(ObjectError::Missing("data"))?
        .into_iter()
        .map(WireBatch::batch)
        .collect()
}

// === File objects ===

/// What tollgate reads of a file object (the answer to an upload).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileObject {
    /// `file-…`.
    pub id: String,
    /// `batch`, `batch_output`, …
    pub purpose: Option<String>,
    /// Its file name.
    pub filename: Option<String>,
    /// Its size.
    pub bytes: Option<u64>,
}

/// Reads a file object.
pub fn parse_file(body: &[u8]) -> Result<FileObject, ObjectError> {
    #[derive(Deserialize)]
    struct WireFile {
        id: Option<String>,
        object: Option<String>,
        purpose: Option<String>,
        filename: Option<String>,
        bytes: Option<u64>,
    }
    let f: WireFile = object(body)?;
    if f.object.as_deref().is_some_and(|o| o != "file") {
        return Err(ObjectError::BadJson("not a file object".into()));
    }
    Ok(FileObject {
        id: f
            .id
            .filter(|s| !s.is_empty())
            .ok_or(ObjectError::Missing("id"))?,
        purpose: f.purpose,
        filename: f.filename,
        bytes: f.bytes,
    })
}

/// A JSON object read as `T` (a struct would also read from an array).
fn object<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ObjectError> {
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ObjectError::BadJson("the body is not a JSON object".into()));
    }
    serde_json::from_slice(body).map_err(|e| ObjectError::BadJson(e.to_string()))
}
