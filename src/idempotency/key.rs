//! The pure parts of idempotent retries: what a valid `Idempotency-Key` is,
//! what makes a retry "the same request" (its fingerprint), where an answer
//! is kept (per account) and how a stored answer is encoded.

use serde::{Deserialize, Serialize};

/// The longest key accepted (Stripe's bound).
pub const MAX_KEY_LEN: usize = 255;

/// Why an `Idempotency-Key` value was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("Idempotency-Key is empty")]
    Empty,
    #[error("Idempotency-Key is longer than {MAX_KEY_LEN} characters")]
    TooLong,
    #[error("Idempotency-Key must be printable ASCII (no control characters)")]
    NotPrintable,
}

/// Checks a key as sent: 1–255 printable ASCII characters (space included).
pub fn parse_key(raw: &[u8]) -> Result<&str, KeyError> {
    if raw.is_empty() {
        return Err(KeyError::Empty);
    }
    if raw.len() > MAX_KEY_LEN {
        return Err(KeyError::TooLong);
    }
    if !raw.iter().all(|b| (0x20..=0x7e).contains(b)) {
        return Err(KeyError::NotPrintable);
    }
    std::str::from_utf8(raw).map_err(|_| KeyError::NotPrintable)
}

/// What a retry must match: blake3 of method, provider, normalised path
/// and the body exactly as the client sent it.
pub type Fingerprint = [u8; 32];

/// The fingerprint of one request. Every part is length-prefixed, so no
/// two different requests run together into the same bytes.
pub fn fingerprint(method: &str, provider: &str, path: &str, body: &[u8]) -> Fingerprint {
    let mut h = blake3::Hasher::new();
    for part in [
        method.as_bytes(),
        provider.as_bytes(),
        path.as_bytes(),
        body,
    ] {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part);
    }
    *h.finalize().as_bytes()
}

/// Whether a provider's answer with `status` is kept for retries: every
/// answer but those the SDKs retry (408, 409, 429, 5xx: overloaded, rate
/// limited, failed: nothing was done, and replaying them for a day would
/// defeat the retry).
pub fn keeps_status(status: u16) -> bool {
    !(matches!(status, 408 | 409 | 429) || status >= 500)
}

/// Where the answer for `key` of `account` is kept: keys are scoped to the
/// account, so two accounts may use the same key independently.
pub fn slot_key(account: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(account.len() + key.len() + 9);
    k.extend_from_slice(&(account.len() as u64).to_be_bytes());
    k.extend_from_slice(account.as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

/// A complete answer kept for retries: what the first client got (status,
/// headers minus framing and hop-by-hop, body; a stream's body is its SSE
/// bytes, receipt comment included). Never holds a credential: the
/// request's headers are not kept, only the answer's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The request it answers.
    pub fingerprint: Fingerprint,
    /// When it may no longer be replayed, µs since the epoch.
    pub expires_us: i64,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    /// The model that answered (for the replay's usage event).
    pub model: String,
}

/// Why a stored record could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("record shorter than its expiry prefix")]
    Short,
    #[error("record: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
}

impl Record {
    /// The stored form: the expiry (8 bytes, big-endian, so a sweep reads
    /// it without decoding the rest), then the record as MessagePack.
    pub fn encode(&self) -> Result<Vec<u8>, rmp_serde::encode::Error> {
        let mut out = Vec::with_capacity(self.body.len() + 256);
        out.extend_from_slice(&self.expires_us.to_be_bytes());
        rmp_serde::encode::write_named(&mut out, self)?;
        Ok(out)
    }

    /// Reads [`Record::encode`]'s form.
    pub fn decode(bytes: &[u8]) -> Result<Record, DecodeError> {
        if bytes.len() < 8 {
            return Err(DecodeError::Short);
        }
        Ok(rmp_serde::from_slice(&bytes[8..])?)
    }

    /// Whether it has expired at `now_us`.
    pub fn expired(&self, now_us: i64) -> bool {
        self.expires_us <= now_us
    }
}

/// The expiry of an encoded record, without decoding it.
pub fn expires_us(bytes: &[u8]) -> Option<i64> {
    Some(i64::from_be_bytes(bytes.get(..8)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn keys_are_1_to_255_printable_ascii() {
        assert_eq!(parse_key(b"abc-123"), Ok("abc-123"));
        assert_eq!(parse_key(b"with space ~!"), Ok("with space ~!"));
        assert_eq!(parse_key(&[b'k'; 255]).map(str::len), Ok(255));
        assert_eq!(parse_key(b""), Err(KeyError::Empty));
        assert_eq!(parse_key(&[b'k'; 256]), Err(KeyError::TooLong));
        assert_eq!(parse_key(b"tab\there"), Err(KeyError::NotPrintable));
        assert_eq!(parse_key(b"nul\0"), Err(KeyError::NotPrintable));
        assert_eq!(parse_key("clé".as_bytes()), Err(KeyError::NotPrintable));
    }

    #[test]
    fn fingerprint_covers_every_part() {
        let base = fingerprint("POST", "anthropic", "/v1/messages", b"{}");
        assert_eq!(
            base,
            fingerprint("POST", "anthropic", "/v1/messages", b"{}")
        );
        for other in [
            fingerprint("PUT", "anthropic", "/v1/messages", b"{}"),
            fingerprint("POST", "openai", "/v1/messages", b"{}"),
            fingerprint("POST", "anthropic", "/v1/messages/batches", b"{}"),
            fingerprint("POST", "anthropic", "/v1/messages", b"{ }"),
            // Parts never run together.
            fingerprint("POST", "anthropic", "/v1/messages{}", b""),
        ] {
            assert_ne!(base, other);
        }
    }

    #[test]
    fn retryable_answers_are_not_kept() {
        for kept in [200, 201, 400, 401, 403, 404, 413, 422] {
            assert!(keeps_status(kept), "{kept}");
        }
        for retried in [408, 409, 429, 500, 502, 503, 504, 529] {
            assert!(!keeps_status(retried), "{retried}");
        }
    }

    #[test]
    fn slots_are_per_account() {
        assert_ne!(slot_key("a", "k"), slot_key("b", "k"));
        // A name cannot reach into the key.
        assert_ne!(slot_key("a\0b", "c"), slot_key("a", "b\0c"));
    }

    #[test]
    fn records_round_trip_and_expire() {
        let r = Record {
            fingerprint: [7; 32],
            expires_us: 1_000,
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: b"{\"ok\":true}".to_vec(),
            model: "m".into(),
        };
        let bytes = r.encode().unwrap();
        assert_eq!(expires_us(&bytes), Some(1_000));
        assert_eq!(Record::decode(&bytes).unwrap(), r);
        assert!(r.expired(1_000) && !r.expired(999));
        assert!(Record::decode(b"short").is_err());
    }
}
