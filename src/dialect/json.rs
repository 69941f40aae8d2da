//! JSON helpers the dialects share: the assemblers' failure marker and size
//! counting, and the wire fields both dialects read the same way (lenient
//! numbers, error objects, the `id` / `model` / `usage` of a body).

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Internal marker: the stream cannot be cached. Callers only need "no", not why.
pub(crate) struct Fail;

pub(crate) fn parse_json<'a, T: Deserialize<'a>>(data: &'a str) -> Result<T, Fail> {
    serde_json::from_str(data).map_err(|_| Fail)
}

pub(crate) fn parse_object(data: &str) -> Result<Map<String, Value>, Fail> {
    match parse_json(data)? {
        Value::Object(map) => Ok(map),
        _ => Err(Fail),
    }
}

pub(crate) fn empty_object() -> Value {
    Value::Object(Map::new())
}

/// `io::Write` sink that only counts bytes.
pub(crate) struct ByteCounter(usize);

impl std::io::Write for ByteCounter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0 += bytes.len();
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Compact JSON size of `value`, without allocating it. Used for the running size check
/// on structural pieces (start blocks, citations…), which are small.
pub(crate) fn json_len<T: Serialize + ?Sized>(value: &T) -> usize {
    let mut counter = ByteCounter(0);
    // Serialising a JSON value into a counter cannot fail.
    match serde_json::to_writer(&mut counter, value) {
        Ok(()) | Err(_) => counter.0,
    }
}

// === Wire fields both dialects share ===

pub(crate) fn set_once_str(slot: &mut Option<String>, value: Option<Cow<'_, str>>) {
    if slot.is_none() {
        *slot = value.map(Cow::into_owned);
    }
}

/// A non-streamed body: `id`, `model` and `usage` in both dialects.
#[derive(Deserialize)]
pub(crate) struct JsonBody<'a, U> {
    #[serde(borrow)]
    pub(crate) id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub(crate) model: Option<Cow<'a, str>>,
    pub(crate) usage: Option<U>,
}

// === Errors ===

#[derive(Deserialize)]
pub(crate) struct ErrorEvent {
    pub(crate) error: Option<ErrorField>,
}

/// The value of an `error` key: normally an object; anything else still
/// counts as an error.
#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum ErrorField {
    Object(ErrorObject),
    Other(IgnoredAny),
}

#[derive(Deserialize)]
pub(crate) struct ErrorObject {
    #[serde(rename = "type")]
    kind: Option<String>,
    code: Option<ErrorCode>,
    metadata: Option<ErrorMetadata>,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum ErrorCode {
    Text(String),
    Number(serde_json::Number),
    Other(IgnoredAny),
}

#[derive(Deserialize)]
pub(crate) struct ErrorMetadata {
    error_type: Option<String>,
}

impl ErrorField {
    pub(crate) fn kind(self) -> String {
        let ErrorField::Object(e) = self else {
            return "error".to_owned();
        };
        let non_empty = |s: Option<String>| s.filter(|s| !s.is_empty());
        let (text_code, number_code) = match e.code {
            Some(ErrorCode::Text(s)) => (non_empty(Some(s)), None),
            Some(ErrorCode::Number(n)) => (None, Some(n.to_string())),
            Some(ErrorCode::Other(_)) | None => (None, None),
        };
        non_empty(e.kind)
            .or(text_code)
            .or_else(|| non_empty(e.metadata.and_then(|m| m.error_type)))
            .or(number_code)
            .unwrap_or_else(|| "error".to_owned())
    }
}

// === Lenient numbers ===

/// A JSON number, or a string holding one; anything else (null, objects…)
/// reads as `None`, so one odd field never loses the rest of the usage.
pub(crate) enum Num {
    Unsigned(u64),
    Signed(i64),
    Float(f64),
}

impl Num {
    fn to_u64(&self) -> Option<u64> {
        match *self {
            Num::Unsigned(u) => Some(u),
            Num::Signed(i) => u64::try_from(i).ok(),
            Num::Float(f) if f.is_finite() && f >= 0.0 && f.fract() == 0.0 && f < 1.8e19 => {
                Some(f as u64)
            }
            Num::Float(_) => None,
        }
    }

    fn to_f64(&self) -> f64 {
        match *self {
            Num::Unsigned(u) => u as f64,
            Num::Signed(i) => i as f64,
            Num::Float(f) => f,
        }
    }
}

pub(crate) struct NumVisitor;

impl<'de> Visitor<'de> for NumVisitor {
    type Value = Option<Num>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a number")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Some(Num::Unsigned(v)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Some(Num::Signed(v)))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Some(Num::Float(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        let v = v.trim();
        Ok(v.parse::<u64>()
            .map(Num::Unsigned)
            .or_else(|_| v.parse::<f64>().map(Num::Float))
            .ok())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(None)
    }
}

pub(crate) fn lenient_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Ok(d.deserialize_any(NumVisitor)?.and_then(|n| n.to_u64()))
}

/// A USD amount (OpenRouter `cost`) as nano-USD.
pub(crate) fn lenient_cost<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Ok(d.deserialize_any(NumVisitor)?
        .and_then(|n| usd_float_to_nusd(n.to_f64())))
}

/// USD as a float → nano-USD, through the float's shortest decimal form, so
/// `0.95` is exactly 950_000_000 (not 949_999_999). Digits past the ninth
/// decimal round half up. `None` for negative, non-finite or too large.
pub(crate) fn usd_float_to_nusd(usd: f64) -> Option<u64> {
    if !usd.is_finite() || usd < 0.0 {
        return None;
    }
    if usd == 0.0 {
        return Some(0);
    }
    // `Display` for f64 is the shortest round-trip form, never exponential.
    let text = usd.to_string();
    let (whole, frac) = text.split_once('.').unwrap_or((&text, ""));
    let mut nusd = whole.parse::<u64>().ok()?.checked_mul(1_000_000_000)?;
    let frac = frac.as_bytes();
    let mut scale = 100_000_000u64;
    for &digit in frac.iter().take(9) {
        nusd = nusd.checked_add(u64::from(digit.checked_sub(b'0')?) * scale)?;
        scale /= 10;
    }
    if frac.get(9).is_some_and(|&d| d >= b'5') {
        nusd = nusd.checked_add(1)?;
    }
    Some(nusd)
}
