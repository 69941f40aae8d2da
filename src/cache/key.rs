//! The cache key: blake3 over everything that can change the answer and
//! nothing that cannot.
//!
//! Hashed, each part length-prefixed so no two different inputs can run
//! together: the account (always: no configuration can make two accounts
//! share an entry), the provider's name, the upstream path (query included),
//! the `anthropic-version` and `anthropic-beta` headers, and the canonical
//! JSON of the body without the fields that do not change the answer
//! ([`IGNORED_FIELDS`]). Canonical JSON: object keys sorted, no whitespace,
//! numbers by value (`1`, `1.0` and `1e0` are the same number).

use std::io::Write;

use serde_json::Value;

/// Top-level body fields left out of the key: how the answer is delivered
/// or labelled, not what it is.
pub const IGNORED_FIELDS: &[&str] = &[
    "stream",
    "stream_options",
    "metadata",
    "user",
    "service_tier",
];

/// A cache key (blake3, 32 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(pub [u8; 32]);

impl Key {
    /// Lowercase hex, for logs and the admin API.
    pub fn to_hex(&self) -> String {
        blake3::Hash::from(self.0).to_hex().to_string()
    }
}

/// What goes into a key besides the body.
pub struct KeyParts<'a> {
    pub account: &'a str,
    pub provider: &'a str,
    pub path: &'a str,
    pub anthropic_version: Option<&'a [u8]>,
    /// The sorted, de-duplicated `anthropic-beta` flags.
    pub anthropic_beta: Option<&'a [u8]>,
    /// A hash of the client's provider credential, only when tollgate
    /// passes it through (injects no key of its own).
    pub credential: Option<&'a [u8]>,
}

/// The key of a request; `None` when the body is not a JSON object.
pub fn key(parts: &KeyParts<'_>, body: &[u8]) -> Option<Key> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let obj = value.as_object()?;
    let mut h = blake3::Hasher::new();
    part(&mut h, b"tollgate-cache-v1");
    part(&mut h, parts.account.as_bytes());
    part(&mut h, parts.provider.as_bytes());
    part(&mut h, parts.path.as_bytes());
    optional(&mut h, parts.anthropic_version);
    optional(&mut h, parts.anthropic_beta);
    optional(&mut h, parts.credential);
    let fields = obj
        .iter()
        .filter(|(k, _)| !IGNORED_FIELDS.contains(&k.as_str()))
        .collect();
    object(&mut HashWriter(&mut h), fields);
    Some(Key(*h.finalize().as_bytes()))
}

fn part(h: &mut blake3::Hasher, bytes: &[u8]) {
    h.update(&(bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

fn optional(h: &mut blake3::Hasher, bytes: Option<&[u8]>) {
    match bytes {
        None => {
            h.update(&[0]);
        }
        Some(b) => {
            h.update(&[1]);
            part(h, b);
        }
    }
}

/// Canonical JSON straight into the hasher (no intermediate string).
struct HashWriter<'a>(&'a mut blake3::Hasher);

impl HashWriter<'_> {
    fn byte(&mut self, b: u8) {
        self.0.update(&[b]);
    }

    fn string(&mut self, s: &str) {
        // serde_json's escaping is itself canonical (one spelling per string).
        let _ = serde_json::to_writer(&mut *self.0, s);
    }

    fn number(&mut self, n: &serde_json::Number) {
        if n.is_u64() || n.is_i64() {
            let _ = write!(self.0, "{n}");
            return;
        }
        let Some(f) = n.as_f64() else {
            let _ = write!(self.0, "{n}");
            return;
        };
        // Integral floats hash as the integer they equal; -0 as 0.
        if f.fract() == 0.0 && f.abs() < 9.007_199_254_740_992e15 {
            let _ = write!(self.0, "{}", f as i64);
        } else {
            let _ = write!(self.0, "{f:e}");
        }
    }
}

fn canonical(w: &mut HashWriter<'_>, v: &Value) {
    match v {
        Value::Null => {
            w.0.update(b"null");
        }
        Value::Bool(true) => {
            w.0.update(b"true");
        }
        Value::Bool(false) => {
            w.0.update(b"false");
        }
        Value::Number(n) => w.number(n),
        Value::String(s) => w.string(s),
        Value::Array(items) => {
            w.byte(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    w.byte(b',');
                }
                canonical(w, item);
            }
            w.byte(b']');
        }
        Value::Object(map) => object(w, map.iter().collect()),
    }
}

/// An object with its keys sorted.
fn object(w: &mut HashWriter<'_>, mut entries: Vec<(&String, &Value)>) {
    entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
    w.byte(b'{');
    for (i, (k, v)) in entries.into_iter().enumerate() {
        if i > 0 {
            w.byte(b',');
        }
        w.string(k);
        w.byte(b':');
        canonical(w, v);
    }
    w.byte(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts<'a>(account: &'a str, beta: Option<&'a [u8]>) -> KeyParts<'a> {
        KeyParts {
            account,
            provider: "anthropic",
            path: "/v1/messages",
            anthropic_version: Some(b"2023-06-01"),
            anthropic_beta: beta,
            credential: None,
        }
    }

    fn k(body: &str) -> Option<Key> {
        key(&parts("acme", None), body.as_bytes())
    }

    #[test]
    fn order_whitespace_and_number_spelling_do_not_matter() {
        let a = k(
            r#"{"model":"m","max_tokens":100,"temperature":1,"messages":[{"role":"user","content":"hi"}]}"#,
        );
        let b = k(r#"{ "messages" : [ {"content":"hi", "role":"user"} ],
                      "temperature": 1.0, "max_tokens": 1e2, "model": "m" }"#);
        assert!(a.is_some());
        assert_eq!(a, b);
        assert_eq!(k(r#"{"t":0.5}"#), k(r#"{"t":5e-1}"#));
        assert_eq!(k(r#"{"t":-0.0}"#), k(r#"{"t":0}"#));
        assert_ne!(k(r#"{"t":0.5}"#), k(r#"{"t":0.25}"#));
    }

    #[test]
    fn delivery_fields_are_ignored_the_rest_is_not() {
        let base = k(r#"{"model":"m","max_tokens":10}"#);
        assert_eq!(
            base,
            k(
                r#"{"model":"m","max_tokens":10,"stream":true,"stream_options":{"include_usage":true},"metadata":{"user_id":"u"},"user":"x","service_tier":"auto"}"#
            )
        );
        assert_ne!(base, k(r#"{"model":"m","max_tokens":11}"#));
        assert_ne!(base, k(r#"{"model":"n","max_tokens":10}"#));
        // Only top-level: a nested "stream" is content.
        assert_ne!(k(r#"{"m":{"stream":1}}"#), k(r#"{"m":{}}"#));
    }

    #[test]
    fn account_provider_path_and_headers_are_in_the_key() {
        let body = br#"{"model":"m"}"#;
        let base = key(&parts("acme", None), body);
        assert_ne!(base, key(&parts("other", None), body));
        assert_ne!(base, key(&parts("acme", Some(b"tools-2024")), body));
        let mut p = parts("acme", None);
        p.provider = "openrouter";
        assert_ne!(base, key(&p, body));
        let mut p = parts("acme", None);
        p.path = "/v1/messages?beta=true";
        assert_ne!(base, key(&p, body));
        let mut p = parts("acme", None);
        p.anthropic_version = None;
        assert_ne!(base, key(&p, body));
        let mut p = parts("acme", None);
        p.credential = Some(b"hash-of-a-key");
        assert_ne!(base, key(&p, body));
        // Length prefixes: moving a byte between parts changes the key.
        let a = key(
            &KeyParts {
                account: "ab",
                provider: "c",
                ..parts("", None)
            },
            body,
        );
        let b = key(
            &KeyParts {
                account: "a",
                provider: "bc",
                ..parts("", None)
            },
            body,
        );
        assert_ne!(a, b);
    }

    #[test]
    fn strings_are_compared_exactly() {
        assert_eq!(k(r#"{"s":"\u00e9"}"#), k(r#"{"s":"é"}"#));
        assert_ne!(k(r#"{"s":"a "}"#), k(r#"{"s":"a"}"#));
        assert_eq!(k("[1]"), None);
        assert_eq!(k("not json"), None);
    }
}
