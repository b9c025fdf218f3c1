//! KMS session encryption (§6): AES-256-GCM with the 64-byte data key split in two. The agent
//! encrypts with bytes 0..32 and decrypts with 32..64; the client the other way round. Wire form
//! of an encrypted payload: nonce (12) ‖ ciphertext ‖ tag (16), no additional data.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use bytes::{BufMut, Bytes, BytesMut};
use thiserror::Error;

/// Bytes of the KMS data key (GenerateDataKey NumberOfBytes).
pub const DATA_KEY_LEN: usize = 64;
/// Bytes added to every encrypted payload.
pub const OVERHEAD: usize = NONCE_LEN + 16;

/// Why a payload could not be decrypted (or a key not used).
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum CryptoError {
    /// The data key is not 64 bytes.
    #[error("the KMS data key has {0} bytes, expected 64")]
    KeyLength(usize),
    /// Authentication failed: wrong key or tampered payload.
    #[error("payload failed authentication")]
    Open,
}

/// Which end of the session this cipher serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// ssm-proxy: encrypts with key bytes 32..64.
    Client,
    /// The agent: encrypts with key bytes 0..32.
    Agent,
}

/// The two AES-256-GCM keys of one side and its nonce counter.
pub struct Cipher {
    seal_key: LessSafeKey,
    open_key: LessSafeKey,
    nonce: [u8; NONCE_LEN],
}

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cipher { .. }")
    }
}

impl Cipher {
    /// Keys for `side` from the 64-byte data key. `nonce_seed` starts the nonce counter: nonces
    /// only have to be unique per key, which a counter guarantees (the agent uses one too).
    pub fn new(side: Side, data_key: &[u8], nonce_seed: u64) -> Result<Self, CryptoError> {
        if data_key.len() != DATA_KEY_LEN {
            return Err(CryptoError::KeyLength(data_key.len()));
        }
        let (agent_key, client_key) = data_key.split_at(32);
        let (seal, open) = match side {
            Side::Client => (client_key, agent_key),
            Side::Agent => (agent_key, client_key),
        };
        let key = |k: &[u8]| {
            UnboundKey::new(&AES_256_GCM, k)
                .map(LessSafeKey::new)
                .map_err(|_| CryptoError::KeyLength(k.len()))
        };
        let mut nonce = [0u8; NONCE_LEN];
        nonce[..8].copy_from_slice(&nonce_seed.to_le_bytes());
        Ok(Self {
            seal_key: key(seal)?,
            open_key: key(open)?,
            nonce,
        })
    }

    /// Encrypts with the next nonce.
    pub fn seal(&mut self, plaintext: &[u8]) -> Bytes {
        let nonce = self.nonce;
        increment(&mut self.nonce);
        seal_with(&self.seal_key, nonce, plaintext)
    }

    /// Decrypts a payload the peer sealed.
    pub fn open(&self, wire: &[u8]) -> Result<Bytes, CryptoError> {
        if wire.len() < OVERHEAD {
            return Err(CryptoError::Open);
        }
        let (nonce, sealed) = wire.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| CryptoError::Open)?;
        let mut buf = sealed.to_vec();
        let plain = self
            .open_key
            .open_in_place(nonce, Aad::empty(), &mut buf)
            .map_err(|_| CryptoError::Open)?;
        Ok(Bytes::copy_from_slice(plain))
    }

    /// Encrypts with an explicit nonce (test vectors).
    pub fn seal_with_nonce(&self, nonce: [u8; NONCE_LEN], plaintext: &[u8]) -> Bytes {
        seal_with(&self.seal_key, nonce, plaintext)
    }
}

fn seal_with(key: &LessSafeKey, nonce: [u8; NONCE_LEN], plaintext: &[u8]) -> Bytes {
    let mut buf = plaintext.to_vec();
    let tag =
        key.seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut buf);
    let mut out = BytesMut::with_capacity(OVERHEAD + buf.len());
    out.put_slice(&nonce);
    out.put_slice(&buf);
    // Sealing only fails for inputs beyond GCM's 64 GiB limit, which a 1 KiB message never is.
    out.put_slice(tag.as_ref().map(|t| t.as_ref()).unwrap_or(&[0u8; 16]));
    out.freeze()
}

/// 96-bit little-endian counter over three u32 words with carry, like the agent's (§13.1).
fn increment(nonce: &mut [u8; NONCE_LEN]) {
    for byte in nonce.iter_mut() {
        let (v, carry) = byte.overflowing_add(1);
        *byte = v;
        if !carry {
            return;
        }
    }
}

/// The KMS encryption context that binds a data key to its session (§6): the session and
/// target ids, plus the agent's random challenge when it offers one. GenerateDataKey on the
/// client and Decrypt on the agent must use exactly this.
pub fn encryption_context(
    session_id: &str,
    target: &str,
    challenge: Option<&str>,
) -> std::collections::BTreeMap<String, String> {
    let mut context = std::collections::BTreeMap::from([
        ("aws:ssm:SessionId".to_owned(), session_id.to_owned()),
        ("aws:ssm:TargetId".to_owned(), target.to_owned()),
    ]);
    if let Some(challenge) = challenge {
        context.insert("aws:ssm:RandomChallenge".to_owned(), challenge.to_owned());
    }
    context
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Vec<u8> {
        (0u8..64).collect()
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    const NONCE: [u8; 12] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];

    #[test]
    fn agent_to_client_vector_of_section_6() {
        let agent = Cipher::new(Side::Agent, &key(), 0).unwrap();
        let wire = agent.seal_with_nonce(NONCE, b"hello");
        assert_eq!(
            hex(&wire),
            "000102030405060708090a0b2f67ba77aa2797ff353b8a046d28236dcd9d057bbb"
        );
        let client = Cipher::new(Side::Client, &key(), 0).unwrap();
        assert_eq!(&client.open(&wire).unwrap()[..], b"hello");
    }

    #[test]
    fn client_to_agent_vector_of_section_6() {
        let client = Cipher::new(Side::Client, &key(), 0).unwrap();
        let wire = client.seal_with_nonce(NONCE, b"hello");
        assert_eq!(
            hex(&wire),
            "000102030405060708090a0b343731cb25fb6b6d50e4ed83c749b851c5fa918ab5"
        );
        let agent = Cipher::new(Side::Agent, &key(), 0).unwrap();
        assert_eq!(&agent.open(&wire).unwrap()[..], b"hello");
    }

    #[test]
    fn nonces_never_repeat_and_tampering_is_caught() {
        let mut c = Cipher::new(Side::Client, &key(), u64::MAX).unwrap();
        let a = c.seal(b"x");
        let b = c.seal(b"x");
        assert_ne!(a[..12], b[..12]);
        let agent = Cipher::new(Side::Agent, &key(), 0).unwrap();
        let mut bad = a.to_vec();
        bad[13] ^= 1;
        assert_eq!(agent.open(&bad), Err(CryptoError::Open));
        assert_eq!(agent.open(&a[..20]), Err(CryptoError::Open));
        let mut n = [0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0, 3, 0, 0, 0];
        increment(&mut n);
        assert_eq!(n, [0, 0, 0, 0, 3, 0, 0, 0, 3, 0, 0, 0]);
    }
}
