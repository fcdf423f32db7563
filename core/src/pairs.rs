//! Proxy-wasm's encoding of header maps, read without copying: a little-endian `u32`
//! count, then each pair's key and value lengths (`u32` each), then each key and value
//! followed by a NUL byte.

/// Why an encoded map could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairsError {
    /// The encoding itself is broken: the host misbehaved.
    Malformed,
    /// A name or value is not UTF-8: Envoy passes a client's obs-text bytes (0x80-0xFF)
    /// through, so this is the client's doing.
    NotUtf8,
}

/// The pairs of an encoded map, borrowing from it.
pub fn parse(buf: &[u8]) -> Result<Vec<(&str, &str)>, PairsError> {
    use PairsError::Malformed;
    let word = |at: usize| -> Option<usize> {
        let b = buf.get(at..at.checked_add(4)?)?;
        usize::try_from(u32::from_le_bytes(b.try_into().ok()?)).ok()
    };
    let count = word(0).ok_or(Malformed)?;
    let mut sizes = 4;
    let mut data = count
        .checked_mul(8)
        .and_then(|n| n.checked_add(4))
        .ok_or(Malformed)?;
    let mut pairs = Vec::with_capacity(count.min(256));
    let mut not_utf8 = false;
    for _ in 0..count {
        let (key_len, value_len) = (
            word(sizes).ok_or(Malformed)?,
            word(sizes + 4).ok_or(Malformed)?,
        );
        sizes += 8;
        let mut take = |len: usize| -> Result<&[u8], PairsError> {
            let end = data.checked_add(len).ok_or(Malformed)?;
            let bytes = buf.get(data..end).ok_or(Malformed)?;
            data = end.checked_add(1).ok_or(Malformed)?;
            Ok(bytes)
        };
        let (key, value) = (take(key_len)?, take(value_len)?);
        match (std::str::from_utf8(key), std::str::from_utf8(value)) {
            (Ok(key), Ok(value)) => pairs.push((key, value)),
            // Read on: a broken encoding further on is still the host's fault.
            _ => not_utf8 = true,
        }
    }
    if not_utf8 {
        return Err(PairsError::NotUtf8);
    }
    Ok(pairs)
}

/// Encodes pairs the same way (for the headers of a local response).
pub fn encode(pairs: &[(&str, &str)]) -> Vec<u8> {
    let bytes: Vec<(&[u8], &[u8])> = pairs
        .iter()
        .map(|(k, v)| (k.as_bytes(), v.as_bytes()))
        .collect();
    encode_bytes(&bytes)
}

/// Encodes pairs of bytes (a header map as a native host hands it over, not UTF-8 for
/// sure).
pub fn encode_bytes(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
    let size: usize = pairs.iter().map(|(k, v)| k.len() + v.len() + 10).sum();
    let mut out = Vec::with_capacity(4 + size);
    let len32 = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
    out.extend_from_slice(&len32(pairs.len()));
    for (k, v) in pairs {
        out.extend_from_slice(&len32(k.len()));
        out.extend_from_slice(&len32(v.len()));
    }
    for (k, v) in pairs {
        out.extend_from_slice(k);
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn pairs_round_trip() {
        let pairs = [(":path", "/v1/chat"), ("x-empty", ""), ("ünï", "çödé")];
        assert_eq!(parse(&encode(&pairs)).unwrap(), pairs);
        assert_eq!(parse(&encode(&[])).unwrap(), vec![]);
    }

    #[test]
    fn malformed_maps_are_refused_not_read_past_their_end() {
        let good = encode(&[("authorization", "Bearer sk-x"), ("a", "b")]);
        for cut in 0..good.len() - 1 {
            assert_eq!(
                parse(&good[..cut]),
                Err(PairsError::Malformed),
                "cut at {cut}"
            );
        }
        let mut huge_count = good.clone();
        huge_count[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(parse(&huge_count), Err(PairsError::Malformed));
        let mut not_utf8 = good.clone();
        let at = not_utf8.len() - 2;
        not_utf8[at] = 0xff;
        assert_eq!(parse(&not_utf8), Err(PairsError::NotUtf8));
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any bytes: no panic, never a read past the end.
        #[test]
        fn any_bytes_parse_without_a_panic(buf in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse(&buf);
        }

        /// Any pairs of bytes round-trip, or are `NotUtf8` exactly when one is not UTF-8.
        #[test]
        fn pairs_of_any_bytes(pairs in proptest::collection::vec(
            (proptest::collection::vec(any::<u8>(), 0..8), proptest::collection::vec(any::<u8>(), 0..8)), 0..6)) {
            let mut buf = (pairs.len() as u32).to_le_bytes().to_vec();
            for (k, v) in &pairs {
                buf.extend_from_slice(&(k.len() as u32).to_le_bytes());
                buf.extend_from_slice(&(v.len() as u32).to_le_bytes());
            }
            for (k, v) in &pairs {
                buf.extend_from_slice(k);
                buf.push(0);
                buf.extend_from_slice(v);
                buf.push(0);
            }
            let utf8 = pairs.iter().all(|(k, v)| std::str::from_utf8(k).is_ok() && std::str::from_utf8(v).is_ok());
            match parse(&buf) {
                Ok(read) => {
                    prop_assert!(utf8);
                    prop_assert_eq!(read.len(), pairs.len());
                }
                Err(e) => {
                    prop_assert!(!utf8);
                    prop_assert_eq!(e, PairsError::NotUtf8);
                }
            }
        }
    }
}
