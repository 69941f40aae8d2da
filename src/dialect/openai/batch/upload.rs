//! `POST /v1/files`: a `multipart/form-data` body with a `purpose` field
//! and a `file` part. For `purpose=batch` the file is read as a batch input
//! file ([`super::input`]) straight from the multipart stream, chunk by
//! chunk, without another copy of it.
//!
//! The multipart syntax is multer's (the parser axum and Rocket use). It is
//! an async parser; here the whole body is already in memory, so its
//! futures never wait, and each is polled once with a no-op waker (no
//! runtime in the dialect layer). Fields in either order: the official
//! Python SDK sends `purpose` first, a `FormData` built from `{file,
//! purpose}` sends the file first (then the body is walked a second time,
//! which costs no copy: [`Bytes`] is shared).

use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;

use super::input::{BatchInput, BatchItem, InputError, InputLimits, InputReader};

/// The `purpose` of a batch input file.
pub const BATCH_PURPOSE: &str = "batch";

/// The longest `purpose` value read.
const MAX_PURPOSE_BYTES: usize = 256;

/// What an upload says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upload {
    /// The `purpose` field (`batch`, `fine-tune`, `assistants`, …).
    pub purpose: String,
    /// The file part's file name, if it has one.
    pub filename: Option<String>,
    /// The batch input file read, when `purpose` is `batch`.
    pub input: Option<BatchInput>,
}

/// An upload that cannot be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UploadError {
    /// The content type is not `multipart/form-data` with a boundary.
    #[error("the request must be multipart/form-data with a boundary ({0})")]
    NotMultipart(String),
    /// The multipart body is malformed.
    #[error("the multipart body is malformed ({0})")]
    Malformed(String),
    /// A required field (`purpose`, `file`) is absent.
    #[error("missing required parameter '{0}'")]
    Missing(&'static str),
    /// `purpose` is longer than any purpose, or not UTF-8.
    #[error("invalid value for 'purpose'")]
    BadPurpose,
    /// The batch input file is not one.
    #[error(transparent)]
    Input(#[from] InputError),
    /// The parser waited for more input although the whole body was given
    /// (not expected: the body stream is always ready).
    #[error("the multipart parser stalled")]
    Stalled,
}

impl UploadError {
    /// The `error.code` for it (an input file's own code when the file is
    /// the problem).
    pub fn code(&self) -> &'static str {
        match self {
            UploadError::NotMultipart(_) | UploadError::Malformed(_) | UploadError::Stalled => {
                "invalid_request"
            }
            UploadError::Missing(_) => "missing_required_parameter",
            UploadError::BadPurpose => "invalid_value",
            UploadError::Input(e) => e.code(),
        }
    }

    /// OpenAI's `error.param` for it.
    pub fn param(&self) -> Option<&'static str> {
        match self {
            UploadError::NotMultipart(_) | UploadError::Malformed(_) | UploadError::Stalled => None,
            UploadError::Missing(field) => Some(field),
            UploadError::BadPurpose => Some("purpose"),
            UploadError::Input(e) => e.param().or(Some("file")),
        }
    }
}

/// Reads a `POST /v1/files` body sent with `content_type`.
pub fn parse_upload(
    content_type: &str,
    body: Bytes,
    limits: InputLimits,
) -> Result<Upload, UploadError> {
    parse_upload_with(content_type, body, limits, &mut |_, _| {})
}

/// [`parse_upload`], handing each batch item and its raw body to `visit`
/// as it is read (only for a `purpose=batch` file).
pub fn parse_upload_with(
    content_type: &str,
    body: Bytes,
    limits: InputLimits,
    visit: &mut impl FnMut(&BatchItem, &[u8]),
) -> Result<Upload, UploadError> {
    let boundary = multer::parse_boundary(content_type)
        .map_err(|e| UploadError::NotMultipart(e.to_string()))?;
    let mut purpose: Option<String> = None;
    let mut filename: Option<String> = None;
    let mut file_seen = false;
    let mut input = None;
    let mut parts = multer::Multipart::new(once(body.clone()), boundary.as_str());
    while let Some(mut field) = next_field(&mut parts)? {
        match field.name() {
            Some("purpose") if purpose.is_none() => purpose = Some(read_purpose(&mut field)?),
            Some("file") if !file_seen => {
                file_seen = true;
                filename = field.file_name().map(str::to_owned);
                // The file after the purpose: read now. Before it: the
                // second walk below reads it once the purpose is known.
                if purpose.as_deref() == Some(BATCH_PURPOSE) {
                    input = Some(read_input(&mut field, limits, visit)?);
                }
            }
            // Other fields (`expires_after[…]`) are skipped unread.
            _ => {}
        }
    }
    let purpose = purpose.ok_or(UploadError::Missing("purpose"))?;
    if !file_seen {
        return Err(UploadError::Missing("file"));
    }
    if purpose == BATCH_PURPOSE && input.is_none() {
        let mut parts = multer::Multipart::new(once(body), boundary.as_str());
        while let Some(mut field) = next_field(&mut parts)? {
            if field.name() == Some("file") {
                input = Some(read_input(&mut field, limits, visit)?);
                break;
            }
        }
    }
    Ok(Upload {
        purpose,
        filename,
        input,
    })
}

/// The whole body as a stream of one chunk, always ready.
fn once(
    body: Bytes,
) -> futures_util::stream::Iter<std::array::IntoIter<Result<Bytes, Infallible>, 1>> {
    futures_util::stream::iter([Ok(body)])
}

/// Polls a future over the in-memory body to its end: it never waits.
fn ready<F: Future>(future: F) -> Result<F::Output, UploadError> {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(out) => Ok(out),
        Poll::Pending => Err(UploadError::Stalled),
    }
}

fn malformed(e: multer::Error) -> UploadError {
    UploadError::Malformed(e.to_string())
}

fn next_field<'r>(
    parts: &mut multer::Multipart<'r>,
) -> Result<Option<multer::Field<'r>>, UploadError> {
    ready(parts.next_field())?.map_err(malformed)
}

fn next_chunk(field: &mut multer::Field<'_>) -> Result<Option<Bytes>, UploadError> {
    ready(field.chunk())?.map_err(malformed)
}

fn read_purpose(field: &mut multer::Field<'_>) -> Result<String, UploadError> {
    let mut value = Vec::new();
    while let Some(chunk) = next_chunk(field)? {
        if value.len() + chunk.len() > MAX_PURPOSE_BYTES {
            return Err(UploadError::BadPurpose);
        }
        value.extend_from_slice(&chunk);
    }
    String::from_utf8(value).map_err(|_| UploadError::BadPurpose)
}

fn read_input(
    field: &mut multer::Field<'_>,
    limits: InputLimits,
    visit: &mut impl FnMut(&BatchItem, &[u8]),
) -> Result<BatchInput, UploadError> {
    let mut reader = InputReader::new(limits);
    while let Some(chunk) = next_chunk(field)? {
        reader.feed_with(&chunk, visit)?;
    }
    Ok(reader.finish_with(visit)?)
}
