//! Secrets at rest: AES-256-GCM, as envelopes. Each secret is encrypted
//! under its own random data key, and the data key is wrapped by a master
//! key that is never stored (it comes from the environment or a file). A
//! master key is replaced by re-wrapping the data keys alone.
//!
//! Every seal binds its `aad` (what the secret belongs to, e.g.
//! `byok/acme/anthropic`), so a sealed record moved under another name
//! does not open.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

const KEY_BYTES: usize = 32;
const NONCE_BYTES: usize = 12;

/// Why sealing or opening failed. Never carries secret material.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("a master key is 32 bytes, written as base64 (44 characters) or 64 hex digits")]
    BadMasterKey,
    #[error("this was sealed under master key {sealed}, not {given}")]
    WrongMasterKey { sealed: String, given: String },
    #[error("does not open: the key is wrong or the record was altered")]
    Corrupt,
    #[error("the OS random number generator failed")]
    Random,
}

/// A 256-bit key that wraps data keys. Its `Debug` hides it.
#[derive(Clone)]
pub struct MasterKey {
    key: [u8; KEY_BYTES],
    id: String,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey({})", self.id)
    }
}

impl MasterKey {
    /// Parses base64 (standard, 44 characters) or 64 hex digits.
    pub fn parse(text: &str) -> Result<MasterKey, EnvelopeError> {
        let text = text.trim();
        let bytes = if text.len() == 2 * KEY_BYTES {
            crate::keys::parse_sha256_hex(text).map(|b| b.to_vec())
        } else {
            base64::engine::general_purpose::STANDARD.decode(text).ok()
        };
        let key: [u8; KEY_BYTES] = bytes
            .and_then(|b| b.try_into().ok())
            .ok_or(EnvelopeError::BadMasterKey)?;
        Ok(MasterKey::from_bytes(key))
    }

    fn from_bytes(key: [u8; KEY_BYTES]) -> MasterKey {
        // The id names the key in records and messages; it is a hash
        // under its own label, so it reveals nothing of the key.
        let mut h = Sha256::new();
        h.update(b"tollgate master key id\0");
        h.update(key);
        let id = crate::keys::to_hex(&h.finalize()[..8]);
        MasterKey { key, id }
    }

    /// A fresh master key, as base64.
    pub fn generate() -> Result<String, EnvelopeError> {
        let key = random::<KEY_BYTES>()?;
        Ok(base64::engine::general_purpose::STANDARD.encode(key))
    }

    /// Names this key (16 hex digits).
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// A secret sealed in an envelope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    /// The master key that wraps `wrapped_key`.
    pub master_id: String,
    /// The data key: nonce, then ciphertext and tag.
    #[serde(with = "serde_bytes")]
    pub wrapped_key: Vec<u8>,
    /// The secret under the data key: nonce, then ciphertext and tag.
    #[serde(with = "serde_bytes")]
    pub ciphertext: Vec<u8>,
}

fn random<const N: usize>() -> Result<[u8; N], EnvelopeError> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|_| EnvelopeError::Random)?;
    Ok(b)
}

/// AES-256-GCM of `plaintext` under `key`, bound to `aad`: a random nonce,
/// then the ciphertext and tag.
pub fn aead_seal(
    key: &[u8; KEY_BYTES],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, EnvelopeError> {
    let nonce = random::<NONCE_BYTES>()?;
    let cipher = Aes256Gcm::new(key.into());
    let ct = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| EnvelopeError::Corrupt)?;
    let mut out = Vec::with_capacity(NONCE_BYTES + ct.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Opens what [`aead_seal`] made.
pub fn aead_open(
    key: &[u8; KEY_BYTES],
    aad: &[u8],
    sealed: &[u8],
) -> Result<Vec<u8>, EnvelopeError> {
    if sealed.len() < NONCE_BYTES {
        return Err(EnvelopeError::Corrupt);
    }
    let (nonce, ct) = sealed.split_at(NONCE_BYTES);
    Aes256Gcm::new(key.into())
        .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad })
        .map_err(|_| EnvelopeError::Corrupt)
}

/// A 256-bit key derived from a high-entropy secret (a 256-bit credential)
/// under `label`: SHA-256 is a sound KDF for such input.
pub fn derive_key(label: &str, secret: &str) -> [u8; KEY_BYTES] {
    let mut h = Sha256::new();
    h.update(label.as_bytes());
    h.update([0]);
    h.update(secret.as_bytes());
    h.finalize().into()
}

/// Seals `plaintext` in a fresh envelope under `master`.
pub fn seal(master: &MasterKey, aad: &[u8], plaintext: &[u8]) -> Result<Sealed, EnvelopeError> {
    let data_key = random::<KEY_BYTES>()?;
    Ok(Sealed {
        master_id: master.id.clone(),
        wrapped_key: aead_seal(&master.key, aad, &data_key)?,
        ciphertext: aead_seal(&data_key, aad, plaintext)?,
    })
}

fn data_key(
    master: &MasterKey,
    aad: &[u8],
    sealed: &Sealed,
) -> Result<[u8; KEY_BYTES], EnvelopeError> {
    if sealed.master_id != master.id {
        return Err(EnvelopeError::WrongMasterKey {
            sealed: sealed.master_id.clone(),
            given: master.id.clone(),
        });
    }
    aead_open(&master.key, aad, &sealed.wrapped_key)?
        .try_into()
        .map_err(|_| EnvelopeError::Corrupt)
}

/// Opens an envelope sealed under `master`.
pub fn open(master: &MasterKey, aad: &[u8], sealed: &Sealed) -> Result<Vec<u8>, EnvelopeError> {
    aead_open(&data_key(master, aad, sealed)?, aad, &sealed.ciphertext)
}

/// The same envelope with its data key wrapped by `new` instead of `old`;
/// the secret's ciphertext is unchanged.
pub fn rewrap(
    old: &MasterKey,
    new: &MasterKey,
    aad: &[u8],
    sealed: &Sealed,
) -> Result<Sealed, EnvelopeError> {
    let key = data_key(old, aad, sealed)?;
    Ok(Sealed {
        master_id: new.id.clone(),
        wrapped_key: aead_seal(&new.key, aad, &key)?,
        ciphertext: sealed.ciphertext.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn master() -> MasterKey {
        MasterKey::parse(&MasterKey::generate().unwrap()).unwrap()
    }

    #[test]
    fn seal_open_rewrap() {
        let (m1, m2) = (master(), master());
        assert_ne!(m1.id(), m2.id());
        let s = seal(&m1, b"byok/acme/anthropic", b"sk-ant-secret").unwrap();
        assert!(!s.ciphertext.windows(6).any(|w| w == b"secret"));
        assert_eq!(
            open(&m1, b"byok/acme/anthropic", &s).unwrap(),
            b"sk-ant-secret"
        );
        // Another name, another master key, an altered byte: nothing opens.
        assert_eq!(
            open(&m1, b"byok/evil/anthropic", &s),
            Err(EnvelopeError::Corrupt)
        );
        assert!(matches!(
            open(&m2, b"byok/acme/anthropic", &s),
            Err(EnvelopeError::WrongMasterKey { .. })
        ));
        let mut bad = s.clone();
        let last = bad.ciphertext.len() - 1;
        bad.ciphertext[last] ^= 1;
        assert_eq!(
            open(&m1, b"byok/acme/anthropic", &bad),
            Err(EnvelopeError::Corrupt)
        );
        let r = rewrap(&m1, &m2, b"byok/acme/anthropic", &s).unwrap();
        assert_eq!(r.ciphertext, s.ciphertext);
        assert_eq!(r.master_id, m2.id());
        assert_eq!(
            open(&m2, b"byok/acme/anthropic", &r).unwrap(),
            b"sk-ant-secret"
        );
        // MessagePack keeps bytes as bin and reads them back.
        let bytes = rmp_serde::to_vec_named(&r).unwrap();
        assert_eq!(rmp_serde::from_slice::<Sealed>(&bytes).unwrap(), r);
    }

    #[test]
    fn master_key_forms() {
        let hex = "00".repeat(32);
        let b64 = base64::engine::general_purpose::STANDARD.encode([0u8; 32]);
        assert_eq!(
            MasterKey::parse(&hex).unwrap().id(),
            MasterKey::parse(&b64).unwrap().id()
        );
        for bad in ["", "abc", &"00".repeat(31), "not base64 at all!!"] {
            assert_eq!(
                MasterKey::parse(bad).unwrap_err(),
                EnvelopeError::BadMasterKey
            );
        }
        assert!(!format!("{:?}", master()).contains('='));
    }
}
