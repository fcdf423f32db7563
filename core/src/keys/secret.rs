//! The shape of a keygate secret, shared by the key-service (which mints them) and the
//! filter (which refuses malformed ones before any lookup).
//!
//! A secret is `sk-` followed by 48 characters of `[A-Za-z0-9]`. The last 6 are the CRC32
//! of the first 42, written in base62 and left-padded with `0`, as GitHub does for its
//! tokens: a typo or a made-up key fails the checksum, and secret scanners can recognise
//! ours. Only the SHA-256 of the whole secret is ever stored or sent over the wire.

use sha2::{Digest, Sha256};

pub const PREFIX: &str = "sk-";
/// Characters after the prefix.
pub const BODY_LEN: usize = 48;
/// Characters of the body covered by the checksum.
pub const RANDOM_LEN: usize = 42;
pub const CHECKSUM_LEN: usize = BODY_LEN - RANDOM_LEN;
pub const SECRET_LEN: usize = PREFIX.len() + BODY_LEN;

/// Base62 digits, in the order GitHub uses for token checksums.
pub const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// SHA-256 of a secret: the only form in which keys are stored or synced.
pub type KeyHash = [u8; 32];

/// The checksum suffix for the 42 random characters of a secret.
pub fn checksum(random: &[u8]) -> [u8; CHECKSUM_LEN] {
    let mut n = crc32fast::hash(random);
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    out
}

/// Builds a secret from 42 random base62 characters by appending their checksum.
/// Returns `None` if `random` is not exactly 42 characters of `[A-Za-z0-9]`.
pub fn from_random(random: &str) -> Option<String> {
    let bytes = random.as_bytes();
    if bytes.len() != RANDOM_LEN || !bytes.iter().all(u8::is_ascii_alphanumeric) {
        return None;
    }
    let sum = checksum(bytes);
    let mut secret = String::with_capacity(SECRET_LEN);
    secret.push_str(PREFIX);
    secret.push_str(random);
    secret.extend(sum.iter().map(|&b| b as char));
    Some(secret)
}

/// True when `candidate` has the prefix, length, alphabet and checksum of a keygate secret.
pub fn is_well_formed(candidate: &str) -> bool {
    let Some(body) = candidate.strip_prefix(PREFIX) else {
        return false;
    };
    let body = body.as_bytes();
    if body.len() != BODY_LEN || !body.iter().all(u8::is_ascii_alphanumeric) {
        return false;
    }
    let (random, sum) = body.split_at(RANDOM_LEN);
    checksum(random) == sum
}

/// The SHA-256 of the whole secret, prefix included.
pub fn hash(secret: &str) -> KeyHash {
    Sha256::digest(secret.as_bytes()).into()
}

/// Lower-case hex of a key hash, the form used on the wire and in the database.
pub fn hash_hex(hash: &KeyHash) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(64);
    for b in hash {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 0xf) as usize] as char);
    }
    s
}

/// Each byte's value as a hex digit (either case); 0xff for any other byte.
const HEX_VALUE: [u8; 256] = {
    let mut table = [0xff; 256];
    let mut i = 0;
    while i < 16 {
        let digit = b"0123456789abcdef"[i];
        table[digit as usize] = i as u8;
        table[digit.to_ascii_uppercase() as usize] = i as u8;
        i += 1;
    }
    table
};

/// Parses 64 hex digits (either case) back into a key hash. Without a branch per digit:
/// a full load parses a million of these, and random digits defeat branch prediction.
pub fn parse_hash_hex(hex: &str) -> Option<KeyHash> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    let mut invalid = 0;
    for (byte, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        let (high, low) = (HEX_VALUE[pair[0] as usize], HEX_VALUE[pair[1] as usize]);
        invalid |= high | low;
        *byte = high << 4 | (low & 0xf);
    }
    (invalid < 16).then_some(out)
}

/// `sk-` + first 4 + `...` + last 4 of the body: safe to show and to log.
pub fn mask(secret: &str) -> String {
    let body = secret.strip_prefix(PREFIX).unwrap_or(secret);
    match (
        body.get(..4),
        body.len().checked_sub(4).and_then(|i| body.get(i..)),
    ) {
        (Some(head), Some(tail)) if body.len() >= 8 => format!("{PREFIX}{head}...{tail}"),
        _ => format!("{PREFIX}..."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const RANDOM: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOP";

    #[test]
    fn a_minted_secret_is_well_formed() {
        let secret = from_random(RANDOM).unwrap();
        assert_eq!(secret.len(), SECRET_LEN);
        assert!(secret.starts_with("sk-abcdef"));
        assert!(is_well_formed(&secret));
    }

    #[test]
    fn checksum_is_crc32_in_zero_padded_base62() {
        // Reference values from Python: zlib.crc32(b"") == 0, zlib.crc32(b"a") == 3904355907,
        // written in base62 with the alphabet above.
        assert_eq!(&checksum(b""), b"000000");
        assert_eq!(&checksum(b"a"), b"4GEHKN");
    }

    #[test]
    fn a_single_changed_character_breaks_the_checksum() {
        let secret = from_random(RANDOM).unwrap();
        for i in PREFIX.len()..secret.len() {
            let mut bytes = secret.clone().into_bytes();
            bytes[i] = if bytes[i] == b'x' { b'y' } else { b'x' };
            let typo = String::from_utf8(bytes).unwrap();
            assert!(!is_well_formed(&typo), "typo at {i} accepted");
        }
    }

    #[test]
    fn malformed_candidates_are_refused() {
        let secret = from_random(RANDOM).unwrap();
        for bad in [
            "",
            "sk-",
            "sk-short",
            &secret[..secret.len() - 1],
            &format!("{secret}a"),
            &secret.replacen("sk-", "pk-", 1),
            &secret.replacen('a', "-", 1),
            &secret.replacen('a', "é", 1),
        ] {
            assert!(!is_well_formed(bad), "accepted {bad:?}");
        }
        assert!(from_random("too-short").is_none());
        assert!(from_random(&RANDOM.replacen('a', "_", 1)).is_none());
    }

    #[test]
    fn hash_round_trips_through_hex() {
        let h = hash("sk-test");
        let hex = hash_hex(&h);
        assert_eq!(hex.len(), 64);
        assert_eq!(parse_hash_hex(&hex), Some(h));
        assert_eq!(parse_hash_hex(&hex.to_uppercase()), Some(h));
        assert_eq!(parse_hash_hex("zz"), None);
        assert_eq!(parse_hash_hex(&"g".repeat(64)), None);
        // One bad digit anywhere, in either half of a byte, or a non-ASCII one.
        for at in [0, 1, 31, 62, 63] {
            for bad in ["g", ":", "/", "G", " "] {
                let mut wrong = hex.clone();
                wrong.replace_range(at..=at, bad);
                assert_eq!(parse_hash_hex(&wrong), None, "{wrong}");
            }
        }
        let accented = format!("{}é", &hex[..62]);
        assert_eq!(accented.len(), 64);
        assert_eq!(parse_hash_hex(&accented), None);
        // SHA-256("abc"), the FIPS 180-2 test vector.
        assert_eq!(
            hash_hex(&hash("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn mask_shows_only_the_ends() {
        let secret = from_random(RANDOM).unwrap();
        let masked = mask(&secret);
        assert!(masked.starts_with("sk-abcd..."));
        assert_eq!(masked.len(), "sk-abcd...wxyz".len());
        assert_eq!(mask("sk-abc"), "sk-...");
    }
}
