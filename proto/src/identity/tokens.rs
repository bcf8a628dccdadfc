//! Join tokens: `BRTKN-1-<root-ca-digest>-<secret>`.
//!
//! - `<root-ca-digest>` is the SHA-256 of the root CA certificate's DER, written in lowercase
//!   base36 and left-padded with `0` to exactly [`DIGEST_LEN`] (50) characters, the same
//!   encoding Swarm uses for `SWMTKN-1`. A joining node checks the root CA it is shown against
//!   this digest ([`JoinToken::verify_ca`]) before it trusts it.
//! - `<secret>` is 128 bits from the OS random source, lowercase base36, left-padded to
//!   exactly [`SECRET_LEN`] (25) characters.
//!
//! The worker and the manager token of a cluster share the digest and differ in the secret;
//! rotating a token draws a new secret ([`JoinToken::rotated`]). The token does not name the
//! role: the manager learns it from which of its two secrets the token matches
//! ([`JoinToken::matches`], constant-time on the secret). `Debug` never prints the secret;
//! `Display` prints the whole token (it is what `berth swarm join-token` shows).

use std::fmt;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use sha2::{Digest, Sha256};

/// First field of every Berth join token.
pub const TOKEN_PREFIX: &str = "BRTKN";
/// The token format version this code writes and reads.
pub const TOKEN_VERSION: &str = "1";
/// Length of the base36 root CA digest field.
pub const DIGEST_LEN: usize = 50;
/// Length of the base36 secret field.
pub const SECRET_LEN: usize = 25;

const BASE36: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";

/// Why a join token could not be made, parsed or checked.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The token does not have the four `-`-separated fields.
    #[error("malformed join token: expected BRTKN-1-<ca digest>-<secret>, got {fields} field(s)")]
    Malformed {
        /// How many `-`-separated fields the input had.
        fields: usize,
    },
    /// The first field is not `BRTKN`.
    #[error("not a berth join token: prefix is {found:?}, expected \"BRTKN\"")]
    WrongPrefix {
        /// The prefix found.
        found: String,
    },
    /// The version field is not one this code understands.
    #[error("unsupported join token version {found:?} (this berth understands version 1)")]
    UnsupportedVersion {
        /// The version found.
        found: String,
    },
    /// The digest field has the wrong length or alphabet.
    #[error("malformed join token: the CA digest must be {DIGEST_LEN} base36 characters")]
    BadDigest,
    /// The secret field has the wrong length or alphabet.
    #[error("malformed join token: the secret must be {SECRET_LEN} base36 characters")]
    BadSecret,
    /// The CA certificate given could not be read as PEM or DER.
    #[error("root CA certificate is neither a PEM certificate nor DER")]
    BadCaCertificate,
    /// The CA certificate does not hash to the digest in the token.
    #[error(
        "the root CA certificate does not match the join token (token names {expected}, CA is {actual})"
    )]
    CaMismatch {
        /// The digest carried by the token.
        expected: String,
        /// The digest of the CA certificate that was offered.
        actual: String,
    },
    /// The OS random source failed.
    #[error("failed to read random bytes for a join token secret: {0}")]
    Random(String),
}

/// A parsed join token. See the module docs for the format.
#[derive(Clone)]
pub struct JoinToken {
    digest: String,
    secret: String,
}

impl JoinToken {
    /// Makes a fresh token for the root CA `ca_cert` (PEM or DER), with a new random secret.
    pub fn generate(ca_cert: &[u8]) -> Result<Self, TokenError> {
        Ok(Self {
            digest: ca_digest_of(ca_cert)?,
            secret: random_secret()?,
        })
    }

    /// Parses `BRTKN-1-<digest>-<secret>`; surrounding whitespace is ignored.
    pub fn parse(s: &str) -> Result<Self, TokenError> {
        let fields: Vec<&str> = s.trim().split('-').collect();
        if fields.len() != 4 {
            // A wrong prefix is the more useful message when the shape is otherwise foreign.
            if let Some(first) = fields.first()
                && *first != TOKEN_PREFIX
                && fields.len() > 1
            {
                return Err(TokenError::WrongPrefix {
                    found: (*first).to_owned(),
                });
            }
            return Err(TokenError::Malformed {
                fields: fields.len(),
            });
        }
        if fields[0] != TOKEN_PREFIX {
            return Err(TokenError::WrongPrefix {
                found: fields[0].to_owned(),
            });
        }
        if fields[1] != TOKEN_VERSION {
            return Err(TokenError::UnsupportedVersion {
                found: fields[1].to_owned(),
            });
        }
        if !is_base36(fields[2], DIGEST_LEN) {
            return Err(TokenError::BadDigest);
        }
        if !is_base36(fields[3], SECRET_LEN) {
            return Err(TokenError::BadSecret);
        }
        Ok(Self {
            digest: fields[2].to_owned(),
            secret: fields[3].to_owned(),
        })
    }

    /// The base36 SHA-256 digest of the root CA this token names.
    pub fn ca_digest(&self) -> &str {
        &self.digest
    }

    /// Checks that `ca_cert` (PEM or DER) is the root CA this token names.
    pub fn verify_ca(&self, ca_cert: &[u8]) -> Result<(), TokenError> {
        let actual = ca_digest_of(ca_cert)?;
        if constant_time_eq(actual.as_bytes(), self.digest.as_bytes()) {
            Ok(())
        } else {
            Err(TokenError::CaMismatch {
                expected: self.digest.clone(),
                actual,
            })
        }
    }

    /// The same CA digest with a new random secret (`join-token --rotate`).
    pub fn rotated(&self) -> Result<Self, TokenError> {
        Ok(Self {
            digest: self.digest.clone(),
            secret: random_secret()?,
        })
    }

    /// True when both tokens name the same CA and carry the same secret. The secret is
    /// compared in constant time, so a caller probing secrets learns nothing from timing.
    pub fn matches(&self, other: &JoinToken) -> bool {
        let same_digest = constant_time_eq(self.digest.as_bytes(), other.digest.as_bytes());
        let same_secret = constant_time_eq(self.secret.as_bytes(), other.secret.as_bytes());
        same_digest & same_secret
    }
}

impl PartialEq for JoinToken {
    fn eq(&self, other: &Self) -> bool {
        self.matches(other)
    }
}

impl Eq for JoinToken {}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{TOKEN_PREFIX}-{TOKEN_VERSION}-{}-{}",
            self.digest, self.secret
        )
    }
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("ca_digest", &self.digest)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl std::str::FromStr for JoinToken {
    type Err = TokenError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// The token digest of a root CA certificate given as PEM or DER: SHA-256 of the DER,
/// lowercase base36, zero-padded to [`DIGEST_LEN`] characters.
pub fn ca_digest_of(ca_cert: &[u8]) -> Result<String, TokenError> {
    let der = ca_der(ca_cert)?;
    let hash = Sha256::digest(&der);
    Ok(base36_padded(&hash, DIGEST_LEN))
}

/// Returns the DER of the first certificate in `ca_cert` if it is PEM, else `ca_cert` itself
/// when it looks like DER (an ASN.1 SEQUENCE).
fn ca_der(ca_cert: &[u8]) -> Result<Vec<u8>, TokenError> {
    let trimmed = ca_cert.trim_ascii_start();
    if trimmed.starts_with(b"-----BEGIN") {
        let cert =
            CertificateDer::from_pem_slice(trimmed).map_err(|_| TokenError::BadCaCertificate)?;
        return Ok(cert.as_ref().to_vec());
    }
    if ca_cert.first() == Some(&0x30) {
        return Ok(ca_cert.to_vec());
    }
    Err(TokenError::BadCaCertificate)
}

fn random_secret() -> Result<String, TokenError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| TokenError::Random(e.to_string()))?;
    Ok(base36_padded(&bytes, SECRET_LEN))
}

fn is_base36(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| BASE36.contains(&b))
}

/// Big-endian bytes as a lowercase base36 number, left-padded with `0` to `width`.
/// `width` must be large enough for the input (50 for 256 bits, 25 for 128 bits).
fn base36_padded(bytes: &[u8], width: usize) -> String {
    let mut num: Vec<u8> = bytes.to_vec();
    let mut digits: Vec<u8> = Vec::with_capacity(width);
    while num.iter().any(|&b| b != 0) {
        // Divide the big-endian number by 36 in place, keeping the remainder.
        let mut rem: u32 = 0;
        for byte in num.iter_mut() {
            let cur = (rem << 8) | u32::from(*byte);
            *byte = (cur / 36) as u8;
            rem = cur % 36;
        }
        digits.push(BASE36[rem as usize]);
    }
    while digits.len() < width {
        digits.push(b'0');
    }
    digits.reverse();
    digits.into_iter().map(char::from).collect()
}

/// Compares two byte strings without an early exit on the first difference. Lengths are not
/// secret (both fields have fixed lengths), so a length mismatch returns at once.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_ca_der(seed: u8) -> Vec<u8> {
        // Only the bytes matter for the digest; a leading 0x30 makes it look like DER.
        let mut v = vec![0x30, 0x82, seed];
        v.extend(std::iter::repeat_n(seed, 40));
        v
    }

    #[test]
    fn base36_matches_known_values() {
        assert_eq!(base36_padded(&[0], 3), "000");
        assert_eq!(base36_padded(&[35], 2), "0z");
        assert_eq!(base36_padded(&[36], 2), "10");
        assert_eq!(base36_padded(&[0x01, 0x00], 2), "74"); // 256 = 7*36 + 4
        // 2^128 - 1 needs exactly 25 base36 digits; 2^256 - 1 exactly 50.
        assert_eq!(base36_padded(&[0xff; 16], 1).len(), 25);
        assert_eq!(base36_padded(&[0xff; 32], 1).len(), 50);
        assert_eq!(base36_padded(&[0xff; 16], 25), "f5lxx1zz5pnorynqglhzmsp33");
    }

    #[test]
    fn generated_token_round_trips_through_display_and_parse() {
        let ca = fake_ca_der(1);
        let token = JoinToken::generate(&ca).expect("generate");
        let text = token.to_string();
        assert!(text.starts_with("BRTKN-1-"), "{text}");
        assert_eq!(text.len(), "BRTKN-1-".len() + DIGEST_LEN + 1 + SECRET_LEN);
        let parsed = JoinToken::parse(&format!("  {text}\n")).expect("parse");
        assert_eq!(parsed, token);
        assert_eq!(parsed.ca_digest(), token.ca_digest());
        parsed.verify_ca(&ca).expect("same CA verifies");
    }

    #[test]
    fn digest_is_sha256_of_der_in_base36() {
        let ca = fake_ca_der(2);
        let hash = Sha256::digest(&ca);
        let token = JoinToken::generate(&ca).expect("generate");
        assert_eq!(token.ca_digest(), base36_padded(&hash, DIGEST_LEN));
    }

    #[test]
    fn pem_and_der_of_the_same_ca_give_the_same_digest() {
        let der = fake_ca_der(3);
        let pem_text = pem_encode(&der);
        assert_eq!(
            ca_digest_of(&der).expect("der"),
            ca_digest_of(pem_text.as_bytes()).expect("pem")
        );
    }

    fn pem_encode(der: &[u8]) -> String {
        // Minimal base64 encoder for the test only.
        const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in der.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        format!("-----BEGIN CERTIFICATE-----\n{out}\n-----END CERTIFICATE-----\n")
    }

    #[test]
    fn token_for_another_ca_fails_verify_ca() {
        let token = JoinToken::generate(&fake_ca_der(4)).expect("generate");
        let err = token.verify_ca(&fake_ca_der(5)).expect_err("other CA");
        assert!(matches!(err, TokenError::CaMismatch { .. }), "{err}");
        assert!(err.to_string().contains("does not match the join token"));
    }

    #[test]
    fn rotated_token_keeps_the_digest_and_changes_the_secret() {
        let token = JoinToken::generate(&fake_ca_der(6)).expect("generate");
        let rotated = token.rotated().expect("rotate");
        assert_eq!(rotated.ca_digest(), token.ca_digest());
        assert_ne!(rotated, token);
        assert!(!rotated.matches(&token));
        assert_ne!(rotated.to_string(), token.to_string());
    }

    type ErrCheck = fn(&TokenError) -> bool;

    #[test]
    fn malformed_tokens_are_refused_with_the_reason() {
        let good = JoinToken::generate(&fake_ca_der(7))
            .expect("generate")
            .to_string();
        let digest = &good[8..8 + DIGEST_LEN];
        let secret = &good[good.len() - SECRET_LEN..];

        let cases: Vec<(String, ErrCheck)> = vec![
            ("".into(), |e| {
                matches!(e, TokenError::Malformed { fields: 1 })
            }),
            ("BRTKN-1-abc".into(), |e| {
                matches!(e, TokenError::Malformed { fields: 3 })
            }),
            (
                format!("SWMTKN-1-{digest}-{secret}"),
                |e| matches!(e, TokenError::WrongPrefix { found } if found == "SWMTKN"),
            ),
            (format!("SWMTKN-2-1-{digest}-{secret}"), |e| {
                matches!(e, TokenError::WrongPrefix { .. })
            }),
            (
                format!("BRTKN-2-{digest}-{secret}"),
                |e| matches!(e, TokenError::UnsupportedVersion { found } if found == "2"),
            ),
            (format!("BRTKN-1-{}-{secret}", &digest[1..]), |e| {
                matches!(e, TokenError::BadDigest)
            }),
            (format!("BRTKN-1-{}-{secret}", digest.to_uppercase()), |e| {
                matches!(e, TokenError::BadDigest)
            }),
            (format!("BRTKN-1-{digest}-{secret}x"), |e| {
                matches!(e, TokenError::BadSecret)
            }),
            (format!("BRTKN-1-{digest}-{}!", &secret[1..]), |e| {
                matches!(e, TokenError::BadSecret)
            }),
        ];
        for (input, check) in cases {
            let err = JoinToken::parse(&input).expect_err(&input);
            assert!(check(&err), "{input:?} gave {err:?}");
        }
    }

    #[test]
    fn debug_hides_the_secret() {
        let token = JoinToken::generate(&fake_ca_der(8)).expect("generate");
        let text = token.to_string();
        let secret = &text[text.len() - SECRET_LEN..];
        let debug = format!("{token:?}");
        assert!(!debug.contains(secret), "{debug}");
        assert!(debug.contains(token.ca_digest()));
    }

    #[test]
    fn non_certificate_input_is_refused() {
        assert!(matches!(
            ca_digest_of(b"hello"),
            Err(TokenError::BadCaCertificate)
        ));
        assert!(matches!(
            ca_digest_of(b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n"),
            Err(TokenError::BadCaCertificate)
        ));
    }

    #[test]
    fn constant_time_eq_compares_contents() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
