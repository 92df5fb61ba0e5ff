//! [`StoreKeys`]: the AES-256-GCM keys that seal store entries, with
//! rotation.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use zeroize::Zeroizing;

use crate::error::{RedisStoreError, RedisStoreErrorKind};

/// The length of an entry key: AES-256.
pub const KEY_LEN: usize = 32;

/// One sealing key and its id (the byte an entry names it by).
#[derive(Clone)]
pub(crate) struct EntryKey {
    pub(crate) id: u8,
    pub(crate) bytes: Zeroizing<[u8; KEY_LEN]>,
}

/// The keys that seal and open store entries: the current key, which seals
/// every entry written, and older keys still accepted when reading, each
/// with a one-byte id recorded in the entries it sealed.
///
/// To rotate: deploy `StoreKeys::new(2, new).with_old(1, old)` everywhere
/// (entries sealed with key 1 still open; new ones are sealed with key 2),
/// then, once the entries written with key 1 have expired (a token's
/// lifetime at most), drop key 1. An entry whose key id matches no key here
/// is [`Invalid`](token_keeper::StoreErrorKind::Invalid): it is treated as
/// no entry and overwritten.
///
/// The key bytes are zeroized on drop; `Debug` shows the ids only.
#[derive(Clone)]
pub struct StoreKeys {
    pub(crate) current: EntryKey,
    pub(crate) old: Vec<EntryKey>,
}

impl StoreKeys {
    /// Keys with `key` (32 random bytes, shared by every process of the
    /// fleet) as the current key, under `id`.
    pub fn new(id: u8, key: [u8; KEY_LEN]) -> StoreKeys {
        StoreKeys {
            current: EntryKey {
                id,
                bytes: Zeroizing::new(key),
            },
            old: Vec::new(),
        }
    }

    /// Keys whose current key is `text`, standard base64 (RFC 4648 §4, with
    /// padding; surrounding ASCII whitespace ignored) of exactly 32 bytes,
    /// under `id`. The error names neither the text nor its bytes.
    pub fn from_base64(id: u8, text: &str) -> Result<StoreKeys, RedisStoreError> {
        Ok(StoreKeys::new(id, decode_key(text)?))
    }

    /// Also accepts, when reading, entries sealed with `key` under `id`
    /// (an older key, during a rotation). Keys are tried by id, the current
    /// one first, then the older ones in the order given.
    pub fn with_old(mut self, id: u8, key: [u8; KEY_LEN]) -> StoreKeys {
        self.old.push(EntryKey {
            id,
            bytes: Zeroizing::new(key),
        });
        self
    }

    /// [`StoreKeys::with_old`] with the key in standard base64, as
    /// [`StoreKeys::from_base64`] reads it.
    pub fn with_old_base64(self, id: u8, text: &str) -> Result<StoreKeys, RedisStoreError> {
        Ok(self.with_old(id, decode_key(text)?))
    }

    /// The id of the key that seals new entries.
    pub fn current_id(&self) -> u8 {
        self.current.id
    }

    /// The keys that may open an entry sealed under `id`, the current key
    /// first.
    pub(crate) fn candidates(&self, id: u8) -> impl Iterator<Item = &EntryKey> {
        std::iter::once(&self.current)
            .chain(self.old.iter())
            .filter(move |key| key.id == id)
    }
}

fn decode_key(text: &str) -> Result<[u8; KEY_LEN], RedisStoreError> {
    let invalid = || {
        RedisStoreError::new(
            RedisStoreErrorKind::InvalidKey,
            "a store key must be standard base64 of exactly 32 bytes",
        )
    };
    let decoded = Zeroizing::new(
        STANDARD
            .decode(text.trim_ascii().as_bytes())
            .map_err(|_| invalid())?,
    );
    if decoded.len() != KEY_LEN {
        return Err(invalid());
    }
    let mut key = [0u8; KEY_LEN];
    key.copy_from_slice(&decoded);
    Ok(key)
}

impl fmt::Debug for StoreKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let old: Vec<u8> = self.old.iter().map(|key| key.id).collect();
        f.debug_struct("StoreKeys")
            .field("current_id", &self.current.id)
            .field("old_ids", &old)
            .finish_non_exhaustive()
    }
}
