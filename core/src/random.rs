//! Randomness: where the core's unpredictable values come from.
//!
//! The core needs random values for two things: the `jti` of every JWT it
//! signs (DPoP proofs and `private_key_jwt` client assertions), which servers
//! use to detect replays and which must therefore be unpredictable and never
//! repeat; and the jitter that spreads refreshes and retries in time.
//!
//! By default both come from a small deterministic generator seeded by
//! [`TokenManager::new`](crate::TokenManager::new): every test is
//! reproducible, but one observed `jti` predicts the following ones, and
//! processes forked from one parent repeat them. So adapters give the manager
//! a [`RandomSource`] backed by the operating system's generator with
//! [`TokenManager::set_random_source`](crate::TokenManager::set_random_source);
//! the core itself stays free of I/O and of platform code.

use std::fmt;

use crate::lifecycle::Jitter;

/// A cryptographically secure source of random bytes, injected by the
/// adapter (typically the operating system's generator, such as `ring`'s
/// `SystemRandom`), so that the sans-IO core never reads `/dev/urandom` itself.
///
/// Once set, every `jti` is 16 bytes (128 bits) from it and the refresh and
/// backoff jitter is drawn from it too.
pub trait RandomSource: Send + Sync {
    /// Fills `dest` entirely with random bytes.
    ///
    /// There is no error to return: a source that cannot produce randomness
    /// must panic rather than hand back predictable bytes.
    fn fill(&self, dest: &mut [u8]);
}

/// The manager's randomness: the injected source when there is one, else
/// the seeded generator.
pub(crate) struct Randomness {
    seeded: Jitter,
    source: Option<Box<dyn RandomSource>>,
}

impl Randomness {
    /// The seeded generator, until a source is set.
    pub(crate) fn new(seed: u64) -> Randomness {
        Randomness {
            seeded: Jitter::new(seed),
            source: None,
        }
    }

    /// Draws everything from `source` from now on.
    pub(crate) fn set_source(&mut self, source: Box<dyn RandomSource>) {
        self.source = Some(source);
    }

    /// A unique JWT id: 128 random bits, base64url without padding.
    pub(crate) fn jti(&mut self) -> String {
        crate::jose::base64url(&self.bytes16())
    }

    /// 128 random bits.
    pub(crate) fn bytes16(&mut self) -> [u8; 16] {
        let mut bytes = [0u8; 16];
        match &self.source {
            Some(source) => source.fill(&mut bytes),
            None => {
                bytes[..8].copy_from_slice(&self.seeded.next_u64().to_le_bytes());
                bytes[8..].copy_from_slice(&self.seeded.next_u64().to_le_bytes());
            }
        }
        bytes
    }

    /// A value in `[0, 1)`, for jitter.
    pub(crate) fn unit(&mut self) -> f64 {
        match &self.source {
            Some(source) => {
                let mut bytes = [0u8; 8];
                source.fill(&mut bytes);
                (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
            }
            None => self.seeded.next_f64(),
        }
    }
}

impl fmt::Debug for Randomness {
    // Neither the generator's state nor the source: only which one is used.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.source.is_some() {
            "injected source"
        } else {
            "seeded"
        };
        f.debug_tuple("Randomness").field(&kind).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Bytes(u8);

    impl RandomSource for Bytes {
        fn fill(&self, dest: &mut [u8]) {
            dest.fill(self.0);
        }
    }

    #[test]
    fn draws_come_from_the_source_once_set() {
        let mut r = Randomness::new(7);
        let seeded = Randomness::new(7).jti();
        assert_eq!(r.jti(), seeded);
        r.set_source(Box::new(Bytes(0)));
        assert_eq!(r.jti(), "AAAAAAAAAAAAAAAAAAAAAA");
        assert_eq!(r.unit(), 0.0);
        r.set_source(Box::new(Bytes(0xFF)));
        let top = r.unit();
        assert!((0.999_999..1.0).contains(&top), "{top}");
        assert_eq!(format!("{r:?}"), r#"Randomness("injected source")"#);
    }

    #[test]
    fn a_manager_with_a_source_can_still_be_shared_between_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<crate::TokenManager>();
        shareable::<Box<dyn RandomSource>>();
    }
}
