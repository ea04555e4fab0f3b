//! Sealing of secrets at rest: ChaCha20-Poly1305 with a random nonce per value, under a 32-byte key generated once
//! in the data dir (mode 0600). Must not: log keys or clear text.

use std::io::Write;
use std::path::Path;

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use serde::{Deserialize, Serialize};

use crate::StoreError;

const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;

/// A sealed secret: nonce and ciphertext (with tag).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Sealed {
    nonce: Vec<u8>,
    ciphertext: Vec<u8>,
}

/// The cipher keyed with the data dir's key file.
#[derive(Clone)]
pub(crate) struct SecretBox {
    cipher: ChaCha20Poly1305,
}

impl SecretBox {
    /// Reads the key file, or creates it (mode 0600) with a fresh random key.
    pub(crate) fn load_or_create(path: &Path) -> Result<Self, StoreError> {
        let key = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => create_key_file(path)?,
            Err(e) => {
                return Err(StoreError::KeyFile(format!(
                    "reading {}: {e}",
                    path.display()
                )))
            }
        };
        if key.len() != KEY_LEN {
            return Err(StoreError::KeyFile(format!(
                "{} must hold {KEY_LEN} bytes",
                path.display()
            )));
        }
        Ok(Self {
            cipher: ChaCha20Poly1305::new(Key::from_slice(&key)),
        })
    }

    pub(crate) fn seal(&self, clear: &[u8]) -> Result<Sealed, StoreError> {
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        let ciphertext = self
            .cipher
            .encrypt(&nonce, clear)
            .map_err(|_| StoreError::Crypto)?;
        Ok(Sealed {
            nonce: nonce.to_vec(),
            ciphertext,
        })
    }

    pub(crate) fn open(&self, sealed: &Sealed) -> Result<Vec<u8>, StoreError> {
        if sealed.nonce.len() != NONCE_LEN {
            return Err(StoreError::Crypto);
        }
        self.cipher
            .decrypt(
                Nonce::from_slice(&sealed.nonce),
                sealed.ciphertext.as_slice(),
            )
            .map_err(|_| StoreError::Crypto)
    }
}

fn create_key_file(path: &Path) -> Result<Vec<u8>, StoreError> {
    let key = ChaCha20Poly1305::generate_key(&mut OsRng).to_vec();
    let mut file = crate::create_private_file(path)
        .map_err(|e| StoreError::KeyFile(format!("creating {}: {e}", path.display())))?;
    file.write_all(&key)?;
    file.sync_all()?;
    Ok(key)
}
