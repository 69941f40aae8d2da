//! Gateway keys: `tg_live_…` / `tg_test_…` keys an app presents where its
//! SDK already sends a provider key, so it never holds the provider's key.
//!
//! Only SHA-256 hashes are configured and kept. A presented key is hashed
//! and compared with every configured hash in constant time (no early exit,
//! no hash-map lookup whose timing depends on the secret).

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Prefix of live keys.
pub const LIVE_PREFIX: &str = "tg_live_";
/// Prefix of test keys.
pub const TEST_PREFIX: &str = "tg_test_";
/// Random bytes in a key (encoded as 64 hex digits).
const KEY_BYTES: usize = 32;

/// Live or test: a sidecar accepts one kind (or both), so a test key never
/// works against a live sidecar and the other way round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyMode {
    Live,
    Test,
}

impl KeyMode {
    /// `live` / `test`.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyMode::Live => "live",
            KeyMode::Test => "test",
        }
    }

    fn of(key: &str) -> Option<KeyMode> {
        if key.starts_with(LIVE_PREFIX) {
            Some(KeyMode::Live)
        } else if key.starts_with(TEST_PREFIX) {
            Some(KeyMode::Test)
        } else {
            None
        }
    }
}

/// Which key modes a sidecar accepts (`gateway_keys_mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcceptMode {
    Live,
    Test,
    Any,
}

impl AcceptMode {
    /// Parses `live` / `test` / `any`.
    pub fn parse(s: &str) -> Option<AcceptMode> {
        match s {
            "live" => Some(AcceptMode::Live),
            "test" => Some(AcceptMode::Test),
            "any" => Some(AcceptMode::Any),
            _ => None,
        }
    }

    fn accepts(self, mode: KeyMode) -> bool {
        matches!(
            (self, mode),
            (AcceptMode::Any, _)
                | (AcceptMode::Live, KeyMode::Live)
                | (AcceptMode::Test, KeyMode::Test)
        )
    }
}

/// One configured gateway key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayKey {
    /// Names the key in rate limits, logs and metrics (never the key itself).
    pub name: String,
    /// The account every request with this key belongs to.
    pub account: String,
    /// SHA-256 of the whole key string.
    pub sha256: [u8; 32],
    /// Requests per minute for this key, if limited.
    pub rpm: Option<u64>,
    /// Tokens per minute for this key, if limited.
    pub tpm: Option<u64>,
}

/// Why a presented key was refused. Messages never contain the key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("a tollgate gateway key is required (x-api-key or Authorization: Bearer)")]
    Missing,
    #[error("invalid tollgate gateway key")]
    Invalid,
    #[error("this sidecar does not accept {0} keys")]
    WrongMode(&'static str),
}

/// The configured keys and the accepted mode.
#[derive(Clone, Debug)]
pub struct KeyRing {
    keys: Vec<GatewayKey>,
    accept: AcceptMode,
    /// Keys are required even when none is valid (every key of a fleet's
    /// accounts revoked must not open the sidecar to keyless requests).
    required: bool,
}

impl KeyRing {
    pub fn new(keys: Vec<GatewayKey>, accept: AcceptMode) -> KeyRing {
        KeyRing {
            keys,
            accept,
            required: false,
        }
    }

    /// Keys that are required even if `keys` is empty.
    pub fn required(keys: Vec<GatewayKey>, accept: AcceptMode) -> KeyRing {
        KeyRing {
            keys,
            accept,
            required: true,
        }
    }

    /// The accepted mode.
    pub fn accept(&self) -> AcceptMode {
        self.accept
    }

    /// True when requests must present a key.
    pub fn enabled(&self) -> bool {
        self.required || !self.keys.is_empty()
    }

    /// The key entry matching `presented`.
    pub fn verify(&self, presented: Option<&str>) -> Result<&GatewayKey, KeyError> {
        let presented = presented
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or(KeyError::Missing)?;
        let digest = sha256(presented);
        // Every entry is compared, whatever matched first.
        let mut found = None;
        for key in &self.keys {
            if bool::from(key.sha256.ct_eq(&digest)) {
                found = Some(key);
            }
        }
        let key = found.ok_or(KeyError::Invalid)?;
        let mode = KeyMode::of(presented).ok_or(KeyError::Invalid)?;
        if !self.accept.accepts(mode) {
            return Err(KeyError::WrongMode(mode.as_str()));
        }
        Ok(key)
    }
}

/// SHA-256 of a key string.
pub fn sha256(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Lowercase hex.
pub fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Parses 64 hex digits.
pub fn parse_sha256_hex(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// A new random key of `mode`.
pub fn generate(mode: KeyMode) -> Result<String, getrandom::Error> {
    generate_with_prefix(match mode {
        KeyMode::Live => LIVE_PREFIX,
        KeyMode::Test => TEST_PREFIX,
    })
}

/// A new random secret: `prefix` and 256 bits from the OS RNG in hex
/// (sidecar credentials `tgs_…`, admin tokens `tga_…`).
pub fn generate_with_prefix(prefix: &str) -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; KEY_BYTES];
    getrandom::fill(&mut bytes)?;
    Ok(format!("{prefix}{}", to_hex(&bytes)))
}

/// The `[[gateway_keys]]` entry to paste into the config for `key`.
pub fn config_entry(key: &str, account: &str, name: &str) -> String {
    format!(
        "[[gateway_keys]]\nname = {name:?}\naccount = {account:?}\nsha256 = \"{}\"\n",
        to_hex(&sha256(key))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(accept: AcceptMode) -> (KeyRing, String, String) {
        let live = generate(KeyMode::Live).unwrap();
        let test = generate(KeyMode::Test).unwrap();
        let keys = [(&live, "acme"), (&test, "acme-staging")]
            .iter()
            .map(|(k, a)| GatewayKey {
                name: (*a).into(),
                account: (*a).into(),
                sha256: sha256(k),
                rpm: None,
                tpm: None,
            })
            .collect();
        (KeyRing::new(keys, accept), live, test)
    }

    #[test]
    fn verify_by_hash_and_mode() {
        let (r, live, test) = ring(AcceptMode::Live);
        assert_eq!(r.verify(Some(&live)).unwrap().account, "acme");
        assert_eq!(r.verify(Some(&test)), Err(KeyError::WrongMode("test")));
        assert_eq!(r.verify(None), Err(KeyError::Missing));
        assert_eq!(r.verify(Some("  ")), Err(KeyError::Missing));
        let mut wrong = live.clone();
        wrong.pop();
        wrong.push('x');
        assert_eq!(r.verify(Some(&wrong)), Err(KeyError::Invalid));
        assert_eq!(
            r.verify(Some("sk-ant-provider-key")),
            Err(KeyError::Invalid)
        );
        let (r, live, test) = ring(AcceptMode::Test);
        assert_eq!(r.verify(Some(&test)).unwrap().account, "acme-staging");
        assert_eq!(r.verify(Some(&live)), Err(KeyError::WrongMode("live")));
        let (r, live, test) = ring(AcceptMode::Any);
        assert!(r.verify(Some(&live)).is_ok() && r.verify(Some(&test)).is_ok());
    }

    #[test]
    fn keys_and_hex() {
        let k = generate(KeyMode::Live).unwrap();
        assert!(k.starts_with("tg_live_") && k.len() == 8 + 64);
        assert_ne!(k, generate(KeyMode::Live).unwrap());
        let h = to_hex(&sha256(&k));
        assert_eq!(parse_sha256_hex(&h), Some(sha256(&k)));
        assert_eq!(parse_sha256_hex("zz"), None);
        // Known vector: SHA-256("abc").
        assert_eq!(
            to_hex(&sha256("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(config_entry(&k, "acme", "ci").contains(&h));
    }
}
