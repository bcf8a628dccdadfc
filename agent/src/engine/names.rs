//! Container ids and names the way Docker makes them: a 64-hex-digit random id (tables show
//! the first 12), and, when the user gives no `--name`, a random `adjective_surname`.

use std::fs::File;
use std::io::{self, Read};

/// Adjectives of generated names.
const ADJECTIVES: &[&str] = &[
    "agile", "bold", "brave", "bright", "busy", "calm", "clever", "cool", "crisp", "curious",
    "daring", "eager", "elated", "epic", "fair", "fervent", "fond", "gentle", "glad", "happy",
    "hardy", "humble", "jolly", "keen", "kind", "lively", "loyal", "lucid", "merry", "modest",
    "nimble", "noble", "patient", "peaceful", "placid", "proud", "quick", "quiet", "rapid",
    "serene", "sharp", "shy", "steady", "stoic", "sturdy", "swift", "tender", "tidy", "upbeat",
    "vivid", "warm", "wise", "witty", "zealous",
];

/// Surnames of scientists and engineers, as in Docker's generator.
const SURNAMES: &[&str] = &[
    "agnesi", "babbage", "bardeen", "bell", "bohr", "boole", "carson", "cerf", "curie", "darwin",
    "dijkstra", "einstein", "euler", "faraday", "fermi", "feynman", "franklin", "galileo", "gauss",
    "goodall", "hamilton", "hawking", "hopper", "hypatia", "johnson", "kepler", "knuth", "lamarr",
    "lamport", "liskov", "lovelace", "maxwell", "meitner", "mendel", "newton", "noether", "pascal",
    "pasteur", "planck", "ritchie", "sammet", "shannon", "tesla", "thompson", "torvalds", "turing",
    "volta", "wilson", "wozniak",
];

fn random_bytes<const N: usize>() -> io::Result<[u8; N]> {
    let mut buf = [0u8; N];
    File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf)
}

/// A new container id: 32 random bytes in lowercase hex. Like Docker, an id whose short
/// form is all digits is redrawn, so that a short id is never mistaken for a number.
pub fn new_container_id() -> io::Result<String> {
    loop {
        let bytes: [u8; 32] = random_bytes()?;
        let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        if !id[..12].bytes().all(|b| b.is_ascii_digit()) {
            return Ok(id);
        }
    }
}

/// A random `adjective_surname`; `retry > 0` appends a digit, as Docker does after a clash.
pub fn random_name(retry: usize) -> io::Result<String> {
    let r: [u8; 4] = random_bytes()?;
    let a = ADJECTIVES[usize::from(u16::from_le_bytes([r[0], r[1]])) % ADJECTIVES.len()];
    let s = SURNAMES[usize::from(u16::from_le_bytes([r[2], r[3]])) % SURNAMES.len()];
    if retry == 0 {
        Ok(format!("{a}_{s}"))
    } else {
        let d: [u8; 1] = random_bytes()?;
        Ok(format!("{a}_{s}{}", d[0] % 10))
    }
}

/// Checks a user-given name (`[a-zA-Z0-9][a-zA-Z0-9_.-]+`, an optional leading `/` is
/// dropped) and returns it without the slash.
pub fn validate_name(name: &str) -> Result<String, String> {
    let bare = name.strip_prefix('/').unwrap_or(name);
    let mut bytes = bare.bytes();
    let ok = bare.len() >= 2
        && bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-');
    if ok {
        Ok(bare.to_string())
    } else {
        Err(format!(
            "Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_64_hex_with_a_non_numeric_short_form() {
        for _ in 0..50 {
            let id = new_container_id().unwrap();
            assert_eq!(id.len(), 64);
            assert!(
                id.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            );
            assert!(!id[..12].bytes().all(|b| b.is_ascii_digit()));
        }
    }

    #[test]
    fn generated_names_are_valid() {
        for retry in 0..3 {
            let n = random_name(retry).unwrap();
            assert!(validate_name(&n).is_ok(), "{n}");
            let (a, s) = n.split_once('_').unwrap();
            assert!(ADJECTIVES.contains(&a));
            assert!(s.starts_with(|c: char| c.is_ascii_lowercase()));
        }
    }

    #[test]
    fn names_follow_dockers_rule() {
        assert_eq!(validate_name("/web.1").unwrap(), "web.1");
        assert_eq!(validate_name("a-b_c").unwrap(), "a-b_c");
        for bad in ["", "a", "-web", "we b", "web/1", "_x", "é9"] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }
}
