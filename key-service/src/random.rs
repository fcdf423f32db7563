//! Random base62 strings from the operating system's CSPRNG: key secrets, tokens, ids and
//! batch-name suffixes all come from here.

use keygate_core::keys::secret::BASE62;

/// Bytes at or above this are thrown away: 248 = 4 × 62, so the bytes kept map onto the
/// 62 characters evenly and no character is more likely than another (no modulo bias).
const ACCEPT_BELOW: u8 = 248;

/// `len` characters drawn uniformly from `[0-9A-Za-z]`.
pub fn base62(len: usize) -> Result<String, getrandom::Error> {
    let mut out = String::with_capacity(len);
    // About 3% of bytes are rejected, so one buffer of len + 16 nearly always suffices.
    let mut buf = vec![0u8; len + 16];
    while out.len() < len {
        getrandom::fill(&mut buf)?;
        for &byte in buf.iter().filter(|&&b| b < ACCEPT_BELOW) {
            if out.len() == len {
                break;
            }
            out.push(char::from(BASE62[usize::from(byte % 62)]));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn has_the_requested_length_and_alphabet() {
        for len in [0, 1, 6, 42, 300] {
            let s = base62(len).unwrap();
            assert_eq!(s.len(), len);
            assert!(s.bytes().all(|b| b.is_ascii_alphanumeric()), "{s}");
        }
    }

    #[test]
    fn draws_differ() {
        assert_ne!(base62(32).unwrap(), base62(32).unwrap());
    }

    #[test]
    fn every_character_turns_up() {
        let s = base62(20_000).unwrap();
        for &c in BASE62 {
            assert!(s.as_bytes().contains(&c), "{} never drawn", char::from(c));
        }
    }
}
