//! What the dialects' replayers share: the replay error, one SSE event
//! written straight into the buffer, JSON objects serialised with a few
//! entries patched (no clone), and required-field readers.

use bytes::{BufMut, BytesMut};
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use serde_json::{Map, Value};

/// Why a stored message could not be replayed as a stream.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The stored bytes are not JSON.
    #[error("cached message is not valid JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    /// The stored JSON is not an object.
    #[error("cached message is not a JSON object")]
    NotObject,
    /// A field the stream needs is absent (or null).
    #[error("cached message has no `{0}` field")]
    MissingField(&'static str),
    /// A field has the wrong JSON type.
    #[error("cached message field `{field}` is not {expected}")]
    InvalidField {
        /// Path of the offending field, e.g. `content[].text`.
        field: &'static str,
        /// What was expected, e.g. `a string`.
        expected: &'static str,
    },
    /// Serialising an event failed (not expected with in-memory JSON values).
    #[error("could not encode a replayed event: {0}")]
    Encode(#[source] serde_json::Error),
}

pub(crate) static NULL: Value = Value::Null;

/// Writes one SSE event (`event: NAME\n` when named, `data: JSON\n\n`); every event,
/// including the last, ends with a blank line, or SDKs drop it.
pub(crate) fn write_event<T: Serialize + ?Sized>(
    buf: &mut BytesMut,
    name: Option<&str>,
    data: &T,
) -> Result<(), ReplayError> {
    if let Some(name) = name {
        buf.put_slice(b"event: ");
        buf.put_slice(name.as_bytes());
        buf.put_u8(b'\n');
    }
    buf.put_slice(b"data: ");
    // Compact JSON never contains a raw line break, so one `data:` line suffices.
    serde_json::to_writer((&mut *buf).writer(), data).map_err(ReplayError::Encode)?;
    buf.put_slice(b"\n\n");
    Ok(())
}

/// Serialises `base` with some top-level entries replaced (or added) without cloning it.
pub(crate) struct Patched<'a> {
    pub(crate) base: &'a Map<String, Value>,
    pub(crate) overrides: &'a [(&'a str, Value)],
}

impl Serialize for Patched<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        for (key, value) in self.base {
            match self
                .overrides
                .iter()
                .find(|(name, _)| *name == key.as_str())
            {
                Some((_, replacement)) => map.serialize_entry(key, replacement)?,
                None => map.serialize_entry(key, value)?,
            }
        }
        for (name, value) in self.overrides {
            if !self.base.contains_key(*name) {
                map.serialize_entry(name, value)?;
            }
        }
        map.end()
    }
}

/// `{key: value}` without building a map.
pub(crate) struct OneField<'a> {
    pub(crate) key: &'a str,
    pub(crate) value: &'a Value,
}

impl Serialize for OneField<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(1))?;
        map.serialize_entry(self.key, self.value)?;
        map.end()
    }
}

/// A required field of one JSON type: `pick` takes it out of its `Value`;
/// `field` names it in errors, `expected` says what it should have been.
pub(crate) fn required<'a, T>(
    map: &'a Map<String, Value>,
    key: &str,
    field: &'static str,
    expected: &'static str,
    pick: impl FnOnce(&'a Value) -> Option<T>,
) -> Result<T, ReplayError> {
    match map.get(key) {
        None | Some(Value::Null) => Err(ReplayError::MissingField(field)),
        Some(v) => pick(v).ok_or(ReplayError::InvalidField { field, expected }),
    }
}

pub(crate) fn str_field<'a>(
    map: &'a Map<String, Value>,
    key: &str,
    field: &'static str,
) -> Result<&'a str, ReplayError> {
    required(map, key, field, "a string", Value::as_str)
}

pub(crate) fn required_array<'a>(
    map: &'a Map<String, Value>,
    key: &str,
    field: &'static str,
) -> Result<&'a Vec<Value>, ReplayError> {
    required(map, key, field, "an array", Value::as_array)
}

pub(crate) fn required_object<'a>(
    map: &'a Map<String, Value>,
    key: &str,
    field: &'static str,
) -> Result<&'a Map<String, Value>, ReplayError> {
    required(map, key, field, "an object", Value::as_object)
}
