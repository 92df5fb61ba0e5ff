//! [`OsRandom`]: the operating system's generator, for the core's `jti`s and jitter.

use ring::rand::SecureRandom;
use token_keeper::RandomSource;

/// The operating system's cryptographically secure generator (`getrandom`
/// on Linux, through ring's `SystemRandom`). Every engine gives it to its
/// core: a `jti` drawn from it predicts nothing, and processes forked from
/// one parent do not repeat each other's `jti`s or refresh in lockstep.
#[derive(Debug)]
pub struct OsRandom(ring::rand::SystemRandom);

impl OsRandom {
    /// The operating system's generator.
    pub fn new() -> OsRandom {
        OsRandom(ring::rand::SystemRandom::new())
    }
}

impl Default for OsRandom {
    fn default() -> Self {
        OsRandom::new()
    }
}

impl RandomSource for OsRandom {
    fn fill(&self, dest: &mut [u8]) {
        // As the trait asks: no predictable bytes, ever. The kernel's
        // generator does not fail once the system has booted.
        self.0
            .fill(dest)
            .expect("the operating system's random number generator failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_with_bytes_that_differ_between_draws() {
        let random = OsRandom::new();
        let (mut a, mut b) = ([0u8; 16], [0u8; 16]);
        random.fill(&mut a);
        random.fill(&mut b);
        assert_ne!(a, b);
        assert_ne!(a, [0u8; 16]);
    }
}
