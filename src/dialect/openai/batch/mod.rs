//! The OpenAI Batch API (`/v1/files` + `/v1/batches`, providers.md §8.3):
//! what tollgate reads of it to reserve a batch's worst case when its input
//! file is uploaded, and to settle each item by `custom_id` when the output
//! and error files are read.
//!
//! The flow and the shapes:
//!
//! 1. `POST /v1/files`, `multipart/form-data` with a `purpose` field
//!    (`batch`) and a `file` part: JSONL, one request a line,
//!    `{"custom_id","method":"POST","url":"/v1/chat/completions","body":{…}}`
//!    ([`upload`], [`input`]). Up to 50,000 requests (and 200 MB, which the
//!    proxy's body limit bounds); one endpoint per file.
//! 2. `POST /v1/batches`
//!    `{"input_file_id","endpoint","completion_window":"24h","metadata"?}`;
//!    the API answers batch objects `{"id","object":"batch","status",
//!    "input_file_id","output_file_id","error_file_id","request_counts",
//!    "endpoint","usage",…}` to create, retrieve, cancel and list
//!    ([`objects`]).
//! 3. Once the status is terminal, `GET /v1/files/{id}/content` of the
//!    output and error files: JSONL lines
//!    `{"id","custom_id","response":{"status_code","request_id","body"},"error"}`
//!    ([`results`]), each body the endpoint's own answer with its `usage`.
//!
//! Which paths are which: [`path`].
//!
//! Not verified against the real API (providers.md marks them "not re-read"
//! or they come from the in-repo fake only): the input line format beyond
//! the SDK's types; the result line shape; that a cancelled or expired item
//! is an error-file line with `response: null` and `error.code`
//! `batch_cancelled` / `batch_expired`; that an item the API refused is an
//! error-file line with its non-200 `response` and `error: null`; that
//! `"stream": true` in a line is refused (tollgate refuses it: a batch
//! answer is never a stream). The API's rule that one file uses one model
//! is not checked here: the reservation prices each line at its own model.

pub mod input;
mod lines;
pub mod objects;
pub mod path;
pub mod results;
pub mod upload;

use std::fmt;

pub use input::{parse_jsonl, BatchInput, BatchItem, InputError, InputLimits, InputReader};
pub use objects::{
    parse_batch, parse_batch_list, parse_create, parse_file, Batch, BatchCreate, BatchStatus,
    FileObject, ObjectError, RequestCounts,
};
pub use path::{split_path, ApiPath, Call};
pub use results::{parse_results, BatchResult, ItemError, ItemOutcome, ResultError, ResultsReader};
pub use upload::{parse_upload, parse_upload_with, Upload, UploadError};

/// The most requests one batch input file may hold.
pub const MAX_REQUESTS: u64 = 50_000;

/// The endpoints a batch can run that tollgate meters (the API also takes
/// `/v1/completions`, `/v1/moderations`, images and videos; tollgate does
/// not price those and refuses them in a batch).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BatchEndpoint {
    /// `/v1/chat/completions`.
    ChatCompletions,
    /// `/v1/responses`.
    Responses,
    /// `/v1/embeddings` (input tokens only).
    Embeddings,
}

impl BatchEndpoint {
    /// The endpoint a line's `url` or a batch's `endpoint` names; `None`
    /// for any other.
    pub fn from_url(url: &str) -> Option<BatchEndpoint> {
        match url {
            "/v1/chat/completions" => Some(BatchEndpoint::ChatCompletions),
            "/v1/responses" => Some(BatchEndpoint::Responses),
            "/v1/embeddings" => Some(BatchEndpoint::Embeddings),
            _ => None,
        }
    }

    /// Its `url` / `endpoint` spelling.
    pub fn as_url(self) -> &'static str {
        match self {
            BatchEndpoint::ChatCompletions => "/v1/chat/completions",
            BatchEndpoint::Responses => "/v1/responses",
            BatchEndpoint::Embeddings => "/v1/embeddings",
        }
    }

    /// Generates output tokens (an output bound to reserve for).
    pub fn has_output(self) -> bool {
        match self {
            BatchEndpoint::ChatCompletions | BatchEndpoint::Responses => true,
            BatchEndpoint::Embeddings => false,
        }
    }
}

impl fmt::Display for BatchEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_url())
    }
}

#[cfg(test)]
mod tests;
