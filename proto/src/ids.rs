//! Random object ids in Swarm's format: 25 characters of lowercase base 36 carrying 128 random
//! bits from the operating system's generator. Tables print the first 12 characters ([`short`]).
//!
//! Invariant: every id this module makes is exactly [`ID_LEN`] characters of `[0-9a-z]`, so
//! ids sort and compare as plain strings and never need escaping.

/// Length of a full id.
pub const ID_LEN: usize = 25;

/// Length of an id as tables print it (`docker service ls` without `--no-trunc`).
pub const SHORT_ID_LEN: usize = 12;

/// The digits of an id, in value order.
const ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";

/// Why an id could not be made.
#[derive(Debug, thiserror::Error)]
pub enum IdError {
    /// The operating system's random generator failed.
    // getrandom::Error implements std::error::Error only with getrandom's "std" feature, so
    // it is carried in the message rather than as a source.
    #[error("failed to read random bytes from the operating system: {0}")]
    Random(getrandom::Error),
}

/// A fresh random id for a node, service, task, network, secret, config or cluster.
///
/// 36^25 > 2^128, so the 128 random bits always fit; shorter values are padded with leading
/// zeros to keep the length fixed.
pub fn try_new_id() -> Result<String, IdError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(IdError::Random)?;
    Ok(encode(u128::from_be_bytes(bytes)))
}

/// A fresh random id, like [`try_new_id`].
///
/// # Panics
///
/// If the operating system's random generator fails. On Linux that is the getrandom(2)
/// system call, which blocks until the pool is seeded and does not fail once it is; use
/// [`try_new_id`] where a failure must be handled.
pub fn new_id() -> String {
    try_new_id().expect("getrandom(2) does not fail on Linux once the entropy pool is seeded")
}

/// Writes `value` as exactly [`ID_LEN`] base-36 digits, most significant first.
fn encode(mut value: u128) -> String {
    let mut digits = [b'0'; ID_LEN];
    for slot in digits.iter_mut().rev() {
        // value % 36 < 36, so the index is in bounds and the cast is lossless.
        *slot = ALPHABET[(value % 36) as usize];
        value /= 36;
    }
    digits.iter().map(|&b| char::from(b)).collect()
}

/// Whether `s` has the shape of an id this module makes (25 characters of `[0-9a-z]`).
///
/// The CLI uses it to tell "an id" from "a name" before asking the managers.
pub fn is_id(s: &str) -> bool {
    s.len() == ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
}

/// The first [`SHORT_ID_LEN`] characters of `id`, or all of it if it is shorter.
pub fn short(id: &str) -> &str {
    match id.char_indices().nth(SHORT_ID_LEN) {
        Some((end, _)) => &id[..end],
        None => id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn new_ids_have_swarm_shape() {
        for _ in 0..1000 {
            let id = new_id();
            assert_eq!(id.len(), ID_LEN, "{id}");
            assert!(is_id(&id), "{id}");
        }
    }

    #[test]
    fn new_ids_do_not_repeat() {
        let ids: HashSet<String> = (0..10_000).map(|_| new_id()).collect();
        assert_eq!(ids.len(), 10_000);
    }

    #[test]
    fn new_ids_use_the_whole_alphabet() {
        // 2000 ids x 25 digits: a missing digit would mean a broken encoding, not bad luck
        // (each digit is expected about 1400 times).
        let seen: HashSet<char> = (0..2000)
            .flat_map(|_| new_id().chars().collect::<Vec<_>>())
            .collect();
        assert_eq!(seen.len(), 36, "{seen:?}");
    }

    #[test]
    fn encode_is_fixed_width_base36() {
        assert_eq!(encode(0), "0".repeat(25));
        assert_eq!(encode(35), format!("{}z", "0".repeat(24)));
        assert_eq!(encode(36), format!("{}10", "0".repeat(23)));
        // u128::MAX = 340282366920938463463374607431768211455 = "f5lxx1zz5pnorynqglhzmsp33" in base 36.
        assert_eq!(encode(u128::MAX), "f5lxx1zz5pnorynqglhzmsp33");
    }

    #[test]
    fn is_id_rejects_other_shapes() {
        assert!(is_id("vk8ec4fjjfb8df77q8f6odi4u"));
        assert!(!is_id("vk8ec4fjjfb8df77q8f6odi4")); // 24 characters
        assert!(!is_id("vk8ec4fjjfb8df77q8f6odi4uu")); // 26 characters
        assert!(!is_id("VK8EC4FJJFB8DF77Q8F6ODI4U")); // upper case
        assert!(!is_id("vk8ec4fjjfb8df77q8f6odi4-"));
        assert!(!is_id(""));
    }

    #[test]
    fn short_takes_twelve_characters() {
        assert_eq!(short("vk8ec4fjjfb8df77q8f6odi4u"), "vk8ec4fjjfb8");
        assert_eq!(short("abc"), "abc");
        assert_eq!(short("abcdefghijkl"), "abcdefghijkl");
        assert_eq!(short(""), "");
        // Never splits a multi-byte character.
        assert_eq!(short("ééééééééééééé"), "éééééééééééé");
    }
}
