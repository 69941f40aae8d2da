//! OpenAI-compatible streams: what the chunks say (usage, model, id, the
//! terminal `[DONE]`, mid-stream errors). Data-only chunks are first searched
//! for a non-null `"usage"` / `"error"` key, and only those (and the first
//! chunk, for model and id) are deserialised.

use std::borrow::Cow;
use std::sync::LazyLock;

use memchr::memmem;
use serde::de::IgnoredAny;
use serde::Deserialize;

use super::usage::WireUsage;
use crate::dialect::json::{set_once_str, ErrorField};
use crate::dialect::usage::{StreamFacts, Usage};

/// Built once: searchers are cheap to use but not to build.
static FINDERS: LazyLock<KeyFinders> = LazyLock::new(KeyFinders::new);

/// Reads one OpenAI-compatible stream's chunks.
#[derive(Debug)]
pub(crate) struct Meter {
    /// The last non-null `usage`.
    usage: Option<Usage>,
    /// The first chunk (model, id) was looked at.
    first_chunk_seen: bool,
}

impl Meter {
    pub(crate) fn new() -> Self {
        Self {
            usage: None,
            first_chunk_seen: false,
        }
    }

    pub(crate) fn usage(&self) -> Usage {
        self.usage.unwrap_or_default()
    }

    /// Handles one event; returns whether it is a usage-only chunk (one the
    /// client may not have asked for).
    pub(crate) fn on_event(&mut self, data: &str, facts: &mut StreamFacts) -> bool {
        let bytes = data.as_bytes();
        if bytes.starts_with(b"[DONE]") {
            facts.complete = true;
            return false;
        }
        let first = !self.first_chunk_seen;
        if !first && !FINDERS.has_usage(bytes) && !FINDERS.has_error(bytes) {
            // A content chunk: nothing to read but its being there.
            facts.deltas += 1;
            return false;
        }
        self.first_chunk_seen = true;
        let Ok(chunk) = serde_json::from_str::<Chunk<'_>>(data) else {
            return false;
        };
        if first {
            set_once_str(&mut facts.id, chunk.id);
            set_once_str(&mut facts.model, chunk.model);
        }
        let has_error = chunk.error.is_some();
        if let Some(error) = chunk.error {
            if facts.error.is_none() {
                facts.error = Some(error.kind());
            }
        }
        let Some(usage) = chunk.usage else {
            return false;
        };
        self.usage = Some(usage.usage());
        facts.saw_usage = true;
        !has_error && chunk.choices.is_none_or(|c| c.is_empty())
    }
}

/// The fields of an OpenAI chunk the meter reads.
#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    model: Option<Cow<'a, str>>,
    choices: Option<Vec<IgnoredAny>>,
    usage: Option<WireUsage>,
    error: Option<ErrorField>,
}

/// Cheap pre-checks on OpenAI chunks before any JSON parsing.
#[derive(Debug)]
pub(crate) struct KeyFinders {
    usage: memmem::Finder<'static>,
    error: memmem::Finder<'static>,
}

impl KeyFinders {
    pub(crate) fn new() -> Self {
        Self {
            usage: memmem::Finder::new(b"\"usage\""),
            error: memmem::Finder::new(b"\"error\""),
        }
    }

    pub(crate) fn has_usage(&self, data: &[u8]) -> bool {
        has_non_null_key(&self.usage, data)
    }

    pub(crate) fn has_error(&self, data: &[u8]) -> bool {
        has_non_null_key(&self.error, data)
    }
}

/// Whether `"key"` occurs as an object key (followed by `:`) with a value
/// other than `null`. Inside JSON strings the quotes would be escaped, so a
/// match there is never followed by `:`; a value `"error"` (e.g.
/// `"finish_reason":"error"`) is not followed by `:` either.
fn has_non_null_key(finder: &memmem::Finder<'_>, data: &[u8]) -> bool {
    finder.find_iter(data).any(|at| {
        let after = skip_ws(&data[at + finder.needle().len()..]);
        match after.strip_prefix(b":") {
            Some(value) => !skip_ws(value).starts_with(b"null"),
            None => false,
        }
    })
}

fn skip_ws(bytes: &[u8]) -> &[u8] {
    let n = bytes
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        .unwrap_or(bytes.len());
    &bytes[n..]
}
