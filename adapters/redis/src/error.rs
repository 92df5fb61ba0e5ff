//! [`RedisStoreError`]: why a store could not be set up.

use std::fmt;

/// What was wrong with the options given to
/// [`RedisStore::new`](crate::RedisStore::new) or a key given to
/// [`StoreKeys`](crate::StoreKeys).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RedisStoreErrorKind {
    /// The URL is not of the form `redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]`.
    InvalidUrl,
    /// The URL's scheme is not `redis` (`rediss`, `unix`, `redis+unix` and
    /// anything else are refused).
    UnsupportedScheme,
    /// A key is not standard base64 of exactly 32 bytes.
    InvalidKey,
    /// Another option is out of range (a zero timeout, for instance).
    InvalidOption,
}

/// Why a [`RedisStore`](crate::RedisStore) or its [`StoreKeys`](crate::StoreKeys)
/// could not be made. Its message names no secret (no password, no key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisStoreError {
    kind: RedisStoreErrorKind,
    message: String,
}

impl RedisStoreError {
    pub(crate) fn new(kind: RedisStoreErrorKind, message: impl Into<String>) -> RedisStoreError {
        RedisStoreError {
            kind,
            message: message.into(),
        }
    }

    /// What was wrong.
    pub fn kind(&self) -> RedisStoreErrorKind {
        self.kind
    }

    /// A secret-free description.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for RedisStoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "redis token store: {}", self.message)
    }
}

impl std::error::Error for RedisStoreError {}
