//! Sealing of secrets at rest: ChaCha20-Poly1305 with a random nonce per value, under a 32-byte key generated once
//! in the data dir (mode 0600). Each sealed value records the format version and the id of the key that sealed it,
//! and (from version 2) is bound to its record by associated data (`task:<id>`, `instance:<id>`), so a sealed value
//! copied into another record does not open.
//!
//! While a key rotation is under way (or was interrupted), `secret.key.new` sits next to `secret.key`; values sealed
//! under either open. Must not: log keys or clear text.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::StoreError;

/// The key file in the data dir.
pub(crate) const KEY_FILE: &str = "secret.key";
/// The next key while a rotation is under way (or was interrupted).
pub(crate) const NEW_KEY_FILE: &str = "secret.key.new";

const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;

/// Sealed without associated data and without a key id (records written before version 2).
const VERSION_LEGACY: u8 = 0;
/// Sealed with the record's label as associated data, key id recorded.
const VERSION_AAD: u8 = 2;

/// A sealed secret: format version, key id, nonce and ciphertext (with tag). None of it is secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Sealed {
    /// 0: legacy (no associated data, no key id); 2: record label as associated data.
    #[serde(default)]
    version: u8,
    /// [`key_id`] of the key that sealed the value; empty for legacy values.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    key_id: String,
    nonce: Vec<u8>,
    ciphertext: Vec<u8>,
}

/// Public identifier of a key: the first 8 bytes of its SHA-256, in hex. Reveals nothing usable about the key.
pub(crate) fn key_id(key: &[u8]) -> String {
    Sha256::digest(key)
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One loaded key.
#[derive(Clone)]
pub(crate) struct KeyEntry {
    id: String,
    cipher: ChaCha20Poly1305,
}

impl KeyEntry {
    fn new(key: &[u8]) -> Self {
        Self {
            id: key_id(key),
            cipher: ChaCha20Poly1305::new(Key::from_slice(key)),
        }
    }
}

/// The ciphers keyed with the data dir's key files: the first one seals, any of them opens.
#[derive(Clone)]
pub(crate) struct SecretBox {
    keys: Arc<Vec<KeyEntry>>,
}

impl SecretBox {
    /// The keys of `data_dir` for normal operation: `secret.key` (created with a fresh random key if missing) seals;
    /// `secret.key.new`, when an interrupted rotation left it, also opens.
    pub(crate) fn for_data_dir(data_dir: &Path) -> Result<Self, StoreError> {
        let current = load_or_create_key(&data_dir.join(KEY_FILE))?;
        let mut keys = vec![current];
        let new_path = data_dir.join(NEW_KEY_FILE);
        if new_path.exists() {
            tracing::warn!(
                path = %new_path.display(),
                "a key rotation was interrupted: secrets sealed with either key file open; run the key rotation \
                 again (coordinator stopped) to finish it, and do not delete {NEW_KEY_FILE}"
            );
            keys.push(load_key(&new_path)?);
        }
        Ok(Self {
            keys: Arc::new(keys),
        })
    }

    /// Seals with `seal_with`, opens with either key.
    pub(crate) fn rotating(seal_with: KeyEntry, also_open: KeyEntry) -> Self {
        Self {
            keys: Arc::new(vec![seal_with, also_open]),
        }
    }

    /// Seals `clear`, bound to `label` (the record's label, e.g. `task:task-0123456789ab`).
    pub(crate) fn seal(&self, clear: &[u8], label: &str) -> Result<Sealed, StoreError> {
        let key = self.keys.first().ok_or(StoreError::Crypto)?;
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        let ciphertext = key
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: clear,
                    aad: label.as_bytes(),
                },
            )
            .map_err(|_| StoreError::Crypto)?;
        Ok(Sealed {
            version: VERSION_AAD,
            key_id: key.id.clone(),
            nonce: nonce.to_vec(),
            ciphertext,
        })
    }

    /// Opens a value sealed for the record labelled `label`. Legacy values (no associated data) open with any key.
    pub(crate) fn open(&self, sealed: &Sealed, label: &str) -> Result<Vec<u8>, StoreError> {
        if sealed.nonce.len() != NONCE_LEN {
            return Err(StoreError::Crypto);
        }
        let nonce = Nonce::from_slice(&sealed.nonce);
        match sealed.version {
            VERSION_LEGACY => self
                .keys
                .iter()
                .find_map(|k| k.cipher.decrypt(nonce, sealed.ciphertext.as_slice()).ok())
                .ok_or(StoreError::Crypto),
            VERSION_AAD => {
                let key = self
                    .keys
                    .iter()
                    .find(|k| k.id == sealed.key_id)
                    .ok_or(StoreError::Crypto)?;
                key.cipher
                    .decrypt(
                        nonce,
                        Payload {
                            msg: sealed.ciphertext.as_slice(),
                            aad: label.as_bytes(),
                        },
                    )
                    .map_err(|_| StoreError::Crypto)
            }
            found => Err(StoreError::SealedVersion { found }),
        }
    }

    /// Seals the legacy way (no associated data, no key id), to test that such values still open.
    #[cfg(test)]
    pub(crate) fn seal_legacy(&self, clear: &[u8]) -> Result<Sealed, StoreError> {
        let key = self.keys.first().ok_or(StoreError::Crypto)?;
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        let ciphertext = key
            .cipher
            .encrypt(&nonce, clear)
            .map_err(|_| StoreError::Crypto)?;
        Ok(Sealed {
            version: VERSION_LEGACY,
            key_id: String::new(),
            nonce: nonce.to_vec(),
            ciphertext,
        })
    }
}

/// Reads the key file at `path`, which must exist, be private to its owner and hold 32 bytes.
pub(crate) fn load_key(path: &Path) -> Result<KeyEntry, StoreError> {
    crate::check_private_file(path)?;
    let key = std::fs::read(path)
        .map_err(|e| StoreError::KeyFile(format!("reading {}: {e}", path.display())))?;
    if key.len() != KEY_LEN {
        return Err(StoreError::KeyFile(format!(
            "{} holds {} bytes, a key file holds exactly {KEY_LEN}: restore the data dir's original key file \
             (without it the stored passwords cannot be read)",
            path.display(),
            key.len()
        )));
    }
    Ok(KeyEntry::new(&key))
}

/// Reads the key file at `path`, or creates it (mode 0600) with a fresh random key when it does not exist.
/// The caller holds the data dir's lock, so no one else creates it concurrently.
pub(crate) fn load_or_create_key(path: &Path) -> Result<KeyEntry, StoreError> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => load_key(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = ChaCha20Poly1305::generate_key(&mut OsRng).to_vec();
            write_key_file(path, &key)?;
            Ok(KeyEntry::new(&key))
        }
        Err(e) => Err(StoreError::KeyFile(format!(
            "checking {}: {e}",
            path.display()
        ))),
    }
}

/// Writes `key` to `path` atomically: a private temporary file, synced, renamed over `path`, directory synced. A
/// crash leaves either no file or the whole key, never a partial one.
fn write_key_file(path: &Path, key: &[u8]) -> Result<(), StoreError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let fail = |what: &str, p: &Path, e: std::io::Error| {
        StoreError::KeyFile(format!("{what} {}: {e}", p.display()))
    };
    // A leftover from a crash while writing: no value was ever sealed with it.
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail("removing the leftover", &tmp, e)),
    }
    let mut file = crate::create_private_file(&tmp).map_err(|e| fail("creating", &tmp, e))?;
    file.write_all(key).map_err(|e| fail("writing", &tmp, e))?;
    file.sync_all().map_err(|e| fail("syncing", &tmp, e))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(|e| fail("renaming the new key file to", path, e))?;
    sync_parent_dir(path)
}

/// Makes a rename or creation in `path`'s directory durable.
pub(crate) fn sync_parent_dir(path: &Path) -> Result<(), StoreError> {
    #[cfg(unix)]
    {
        if let Some(dir) = path.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| StoreError::KeyFile(format!("syncing {}: {e}", dir.display())))?;
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}
