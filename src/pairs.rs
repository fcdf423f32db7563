//! Proxy-wasm's encoding of header maps, read without copying: a little-endian `u32`
//! count, then each pair's key and value lengths (`u32` each), then each key and value
//! followed by a NUL byte.

/// The pairs of an encoded map, borrowing from it; `None` if it is malformed or not
/// UTF-8 (Envoy's header maps are, so that means a broken host).
pub fn parse(buf: &[u8]) -> Option<Vec<(&str, &str)>> {
    let word = |at: usize| -> Option<usize> {
        let b = buf.get(at..at.checked_add(4)?)?;
        usize::try_from(u32::from_le_bytes(b.try_into().ok()?)).ok()
    };
    let count = word(0)?;
    let mut sizes = 4;
    let mut data = count.checked_mul(8)?.checked_add(4)?;
    let mut pairs = Vec::with_capacity(count.min(256));
    for _ in 0..count {
        let (key_len, value_len) = (word(sizes)?, word(sizes + 4)?);
        sizes += 8;
        let key = buf.get(data..data.checked_add(key_len)?)?;
        data = data.checked_add(key_len + 1)?;
        let value = buf.get(data..data.checked_add(value_len)?)?;
        data = data.checked_add(value_len + 1)?;
        pairs.push((
            std::str::from_utf8(key).ok()?,
            std::str::from_utf8(value).ok()?,
        ));
    }
    Some(pairs)
}

/// Encodes pairs the same way (for the headers of a local response).
pub fn encode(pairs: &[(&str, &str)]) -> Vec<u8> {
    let size: usize = pairs.iter().map(|(k, v)| k.len() + v.len() + 10).sum();
    let mut out = Vec::with_capacity(4 + size);
    let len32 = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
    out.extend_from_slice(&len32(pairs.len()));
    for (k, v) in pairs {
        out.extend_from_slice(&len32(k.len()));
        out.extend_from_slice(&len32(v.len()));
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
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
            assert_eq!(parse(&good[..cut]), None, "cut at {cut}");
        }
        let mut huge_count = good.clone();
        huge_count[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(parse(&huge_count), None);
        let mut not_utf8 = good.clone();
        let at = not_utf8.len() - 2;
        not_utf8[at] = 0xff;
        assert_eq!(parse(&not_utf8), None);
    }
}
