//! One key as it sits in proxy-wasm shared data: a short name derived from its hash, and a
//! compact binary value the request path decodes without a parser.
//!
//! Envoy keeps shared data as `std::string` keys and values in a hash map; with libc++
//! (Envoy's release builds) strings of up to 22 bytes live inside the map node with no
//! allocation of their own, so the name is kept to 21 bytes. The value carries what a
//! request needs and nothing else:
//!
//! ```text
//! u8  FORMAT
//! u8  flags (ENABLED, EXPIRES, QUOTA, MODELS, IPS, IPS_UNUSABLE)
//! u32 epoch (little-endian), the full load that wrote it (see `shared`)
//! i64 expires_at (Unix seconds)          if EXPIRES
//! i64 remaining quota                    if QUOTA
//! str id, str name, str group, str account     (str = u16 length + UTF-8)
//! u16 count + str * count                if MODELS (the key's own list)
//! u16 count + net * count                if IPS (net = u8 prefix, u8 4|6, 4|16 bytes)
//! u64 rpm, u64 tpm, u64 max_parallel     if LIMITS (0 = no limit)
//! i64 period_end, i64 quota              if PERIOD (a limited key's quota, per period if
//!                                        it has one; period_end i64::MAX: it never
//!                                        starts afresh)
//! u16 count + cap * count                if the key has model caps (a tail: a value
//!                                        written before caps existed ends before it)
//! cap = str model, u8 unit (0 credits, 1 tokens), i64 limit, i64 used,
//!       i64 period_end (i64::MAX: never resets)
//! ```
//!
//! An empty value is a revoked key (shared data has no delete).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::Range;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ipnet::IpNet;

use crate::keys::client_ip::{self, Allowlist};
use crate::keys::secret::{self, KeyHash};
use crate::kv::{HostError, SharedData};
use crate::limits::rate::Limits;
use crate::sync::snapshot::{CapUnit, KeyRecord, ModelCap, Reset};

const FORMAT: u8 = 1;

const ENABLED: u8 = 1;
const EXPIRES: u8 = 1 << 1;
const QUOTA: u8 = 1 << 2;
const MODELS: u8 = 1 << 3;
const IPS: u8 = 1 << 4;
/// The key had allowlist entries, none of which parsed: it admits no source.
const IPS_UNUSABLE: u8 = 1 << 5;
/// The key has rate limits of its own.
const LIMITS: u8 = 1 << 6;
/// The key's quota is known: it starts afresh when its budget period ends, or never
/// (a period that ends at `NEVER`).
const PERIOD: u8 = 1 << 7;

/// The end of a period that never ends: of a quota that never starts afresh.
const NEVER: i64 = i64::MAX;

/// Bytes of the hash in the entry's name: 120 bits. Finding a secret whose hash shares
/// them with one of a million stored keys takes about 2^100 hashes.
const NAME_HASH_BYTES: usize = 15;

/// The shared-data name of the key with this hash: `k` + 20 characters of base64url.
pub fn name(hash: &KeyHash) -> String {
    let mut name = String::with_capacity(1 + 20);
    name.push('k');
    URL_SAFE_NO_PAD.encode_string(&hash[..NAME_HASH_BYTES], &mut name);
    name
}

/// Why a record cannot become an entry.
#[derive(Debug, PartialEq, Eq)]
pub enum EncodeError {
    BadHash,
    /// A string or list longer than 65535 (the key-service never makes one).
    TooLong,
}

/// The entry of one snapshot record: its name and value.
pub fn encode(record: &KeyRecord, epoch: u32) -> Result<(String, Vec<u8>), EncodeError> {
    let hash = secret::parse_hash_hex(&record.hash).ok_or(EncodeError::BadHash)?;
    let allowlist = Allowlist::parse(&record.ip_allowlist);
    let mut flags = 0;
    for (set, flag) in [
        (record.enabled, ENABLED),
        (record.expires_at.is_some(), EXPIRES),
        (record.remaining_quota.is_some(), QUOTA),
        (!record.models.is_empty(), MODELS),
        (!allowlist.nets().is_empty(), IPS),
        (allowlist.is_unusable(), IPS_UNUSABLE),
        (limits(record).any(), LIMITS),
        (slot(record).is_some(), PERIOD),
    ] {
        if set {
            flags |= flag;
        }
    }
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&[FORMAT, flags]);
    out.extend_from_slice(&epoch.to_le_bytes());
    for value in [record.expires_at, record.remaining_quota]
        .into_iter()
        .flatten()
    {
        out.extend_from_slice(&value.to_le_bytes());
    }
    for text in [&record.id, &record.name, &record.group, &record.account] {
        put_str(&mut out, text)?;
    }
    if !record.models.is_empty() {
        put_len(&mut out, record.models.len())?;
        for model in &record.models {
            put_str(&mut out, model)?;
        }
    }
    if !allowlist.nets().is_empty() {
        put_len(&mut out, allowlist.nets().len())?;
        for net in allowlist.nets() {
            out.push(net.prefix_len());
            match net.addr() {
                IpAddr::V4(v4) => {
                    out.push(4);
                    out.extend_from_slice(&v4.octets());
                }
                IpAddr::V6(v6) => {
                    out.push(6);
                    out.extend_from_slice(&v6.octets());
                }
            }
        }
    }
    if limits(record).any() {
        for limit in [record.rpm, record.tpm, record.max_parallel] {
            out.extend_from_slice(&limit.unwrap_or(0).to_le_bytes());
        }
    }
    if let Some(reset) = slot(record) {
        out.extend_from_slice(&reset.at.to_le_bytes());
        out.extend_from_slice(&reset.to.to_le_bytes());
    }
    if !record.model_caps.is_empty() {
        put_len(&mut out, record.model_caps.len())?;
        for cap in &record.model_caps {
            put_str(&mut out, &cap.model)?;
            out.push(match cap.unit {
                CapUnit::Credits => 0,
                CapUnit::Tokens => 1,
            });
            for value in [cap.limit, cap.used, cap.period_end.unwrap_or(i64::MAX)] {
                out.extend_from_slice(&value.to_le_bytes());
            }
        }
    }
    Ok((name(&hash), out))
}

/// What a limited key's PERIOD slot holds: its next budget period if its quota starts
/// afresh, else its quota as a period that ends at `NEVER` (a filter built before the
/// quota was carried reads that as a period `Reset::apply` never reaches, so it decides
/// as before).
fn slot(record: &KeyRecord) -> Option<Reset> {
    record.remaining_quota?;
    Reset::of(record.period_end, record.period_quota)
        .or_else(|| record.quota.map(|to| Reset { at: NEVER, to }))
}

/// The key's own limits; a limit of 0 (which the key-service refuses) is none.
fn limits(record: &KeyRecord) -> Limits {
    let set = |limit: Option<u64>| limit.filter(|&l| l > 0);
    Limits {
        rpm: set(record.rpm),
        tpm: set(record.tpm),
        max_parallel: set(record.max_parallel),
    }
}

fn put_len(out: &mut Vec<u8>, len: usize) -> Result<(), EncodeError> {
    let len = u16::try_from(len).map_err(|_| EncodeError::TooLong)?;
    out.extend_from_slice(&len.to_le_bytes());
    Ok(())
}

fn put_str(out: &mut Vec<u8>, text: &str) -> Result<(), EncodeError> {
    put_len(out, text.len())?;
    out.extend_from_slice(text.as_bytes());
    Ok(())
}

/// A decoded entry. Owns the value's bytes; strings and lists are ranges into them,
/// checked once by `decode`.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    bytes: Vec<u8>,
    flags: u8,
    pub epoch: u32,
    pub expires_at: Option<i64>,
    /// What the key may still spend in the period the snapshot saw (see `remaining_at`).
    pub remaining_quota: Option<i64>,
    /// When that period ends and what the key may spend from then on.
    pub period: Option<Reset>,
    /// A limited key's quota (per period, for a key with one), if the snapshot carried
    /// it.
    pub quota: Option<i64>,
    /// Start of the model caps (their count), if the key has any.
    caps: Option<usize>,
    id: Range<usize>,
    name: Range<usize>,
    group: Range<usize>,
    account: Range<usize>,
    /// Start of the models list (its count), if the key has one.
    models: Option<usize>,
    /// Start of the IP list (its count), if the key has one.
    ips: Option<usize>,
    /// The key's own rate limits (its group's may be stricter).
    pub limits: Limits,
}

/// Reads through a value, refusing to run past its end.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let slice = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(slice)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1)?.first().copied()
    }

    fn u16(&mut self) -> Option<usize> {
        let b = self.take(2)?;
        Some(usize::from(u16::from_le_bytes([*b.first()?, *b.get(1)?])))
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    /// A string's range, checked to be UTF-8.
    fn str_range(&mut self) -> Option<Range<usize>> {
        let len = self.u16()?;
        let start = self.at;
        std::str::from_utf8(self.take(len)?).ok()?;
        Some(start..self.at)
    }

    fn str(&mut self) -> Option<&'a str> {
        let len = self.u16()?;
        std::str::from_utf8(self.take(len)?).ok()
    }

    fn cap(&mut self) -> Option<ModelCap> {
        let model = self.str()?.to_owned();
        let unit = match self.u8()? {
            0 => CapUnit::Credits,
            1 => CapUnit::Tokens,
            _ => return None,
        };
        let mut int = || self.array::<8>().map(i64::from_le_bytes);
        let (limit, used, end) = (int()?, int()?, int()?);
        Some(ModelCap {
            model,
            unit,
            limit,
            used,
            period_end: (end != i64::MAX).then_some(end),
        })
    }

    fn net(&mut self) -> Option<IpNet> {
        let prefix = self.u8()?;
        let addr = match self.u8()? {
            4 => IpAddr::V4(Ipv4Addr::from(self.array::<4>()?)),
            6 => IpAddr::V6(Ipv6Addr::from(self.array::<16>()?)),
            _ => return None,
        };
        IpNet::new(addr, prefix).ok()
    }
}

impl Entry {
    /// The entry the filter holds for `record`, as if loaded (epoch 1); `None` if it
    /// cannot be stored (a string or list too long). An entry is its encoded bytes, so
    /// this encodes: the key-service's check endpoint decides on the filter's own entry.
    pub fn from_record(record: &KeyRecord) -> Option<Entry> {
        let (_, value) = encode(record, 1).ok()?;
        decode(value)
    }
}

/// Decodes a value; `None` for a revoked key (empty value) or bytes this version of the
/// filter does not understand, which is treated as an unknown key.
pub fn decode(bytes: Vec<u8>) -> Option<Entry> {
    let mut r = Reader {
        bytes: &bytes,
        at: 0,
    };
    if r.u8()? != FORMAT {
        return None;
    }
    let flags = r.u8()?;
    let epoch = u32::from_le_bytes(r.array::<4>()?);
    let expires_at = (flags & EXPIRES != 0)
        .then(|| r.array::<8>().map(i64::from_le_bytes))
        .map_or(Some(None), |v| v.map(Some))?;
    let remaining_quota = (flags & QUOTA != 0)
        .then(|| r.array::<8>().map(i64::from_le_bytes))
        .map_or(Some(None), |v| v.map(Some))?;
    let (id, name, group, account) = (
        r.str_range()?,
        r.str_range()?,
        r.str_range()?,
        r.str_range()?,
    );
    let models = if flags & MODELS != 0 {
        let start = r.at;
        for _ in 0..r.u16()? {
            r.str()?;
        }
        Some(start)
    } else {
        None
    };
    let ips = if flags & IPS != 0 {
        let start = r.at;
        for _ in 0..r.u16()? {
            r.net()?;
        }
        Some(start)
    } else {
        None
    };
    let limits = if flags & LIMITS != 0 {
        let mut limit = || {
            r.array::<8>()
                .map(|b| Some(u64::from_le_bytes(b)).filter(|&l| l > 0))
        };
        Limits {
            rpm: limit()?,
            tpm: limit()?,
            max_parallel: limit()?,
        }
    } else {
        Limits::default()
    };
    let (period, quota) = if flags & PERIOD != 0 {
        let at = i64::from_le_bytes(r.array::<8>()?);
        let to = i64::from_le_bytes(r.array::<8>()?);
        ((at != NEVER).then_some(Reset { at, to }), Some(to))
    } else {
        (None, None)
    };
    let caps = if r.at < r.bytes.len() {
        let start = r.at;
        for _ in 0..r.u16()? {
            r.cap()?;
        }
        Some(start)
    } else {
        None
    };
    Some(Entry {
        caps,
        period,
        quota,
        limits,
        flags,
        epoch,
        expires_at,
        remaining_quota,
        id,
        name,
        group,
        account,
        models,
        ips,
        bytes,
    })
}

impl Entry {
    /// What the key may still spend at `now` (Unix seconds); `None` = unlimited. Once its
    /// budget period has ended, that is its whole quota, before any snapshot says so.
    pub fn remaining_at(&self, now: i64) -> Option<i64> {
        Reset::apply(self.period, self.remaining_quota, now)
    }

    /// Whether the key limits any model of its own.
    pub fn has_caps(&self) -> bool {
        self.caps.is_some()
    }

    /// The key's caps per model (none if it has none).
    pub fn caps(&self) -> Vec<ModelCap> {
        let Some(at) = self.caps else {
            return Vec::new();
        };
        let mut r = Reader {
            bytes: &self.bytes,
            at,
        };
        let count = r.u16().unwrap_or(0);
        (0..count).map_while(|_| r.cap()).collect()
    }

    /// The cap that counts a request for `model`: the most specific one naming it.
    /// On the request path: one pass over the encoded caps, and only the chosen one is
    /// decoded (a cap's fixed part is 25 bytes after its name).
    pub fn cap_for(&self, model: &str) -> Option<ModelCap> {
        let mut r = Reader {
            bytes: &self.bytes,
            at: self.caps?,
        };
        // (specificity, where the cap starts); the first of equals wins, as a map would
        // hold one entry per name.
        let mut best: Option<(usize, usize)> = None;
        for _ in 0..r.u16()? {
            let start = r.at;
            let score = crate::decide::model::specificity(r.str()?, model);
            r.take(25)?;
            if let Some(score) = score.filter(|s| best.is_none_or(|(b, _)| *s > b)) {
                best = Some((score, start));
            }
        }
        let (_, at) = best?;
        Reader {
            bytes: &self.bytes,
            at,
        }
        .cap()
    }

    fn text(&self, range: &Range<usize>) -> &str {
        self.bytes
            .get(range.clone())
            .and_then(|b| std::str::from_utf8(b).ok())
            .unwrap_or_default()
    }

    fn list_at(&self, start: usize) -> Reader<'_> {
        Reader {
            bytes: &self.bytes,
            at: start,
        }
    }

    pub fn enabled(&self) -> bool {
        self.flags & ENABLED != 0
    }

    pub fn id(&self) -> &str {
        self.text(&self.id)
    }

    pub fn name(&self) -> &str {
        self.text(&self.name)
    }

    pub fn group(&self) -> &str {
        self.text(&self.group)
    }

    pub fn account(&self) -> &str {
        self.text(&self.account)
    }

    /// Whether the key has a model list of its own.
    pub fn restricts_models(&self) -> bool {
        self.models.is_some()
    }

    /// Whether the key's own list allows `model` (a key without a list allows all); an
    /// entry ending in `*` is a pattern (`model::specificity`).
    pub fn allows_model(&self, model: &str) -> bool {
        let Some(start) = self.models else {
            return true;
        };
        let mut r = self.list_at(start);
        let count = r.u16().unwrap_or(0);
        (0..count).any(|_| {
            r.str()
                .is_some_and(|entry| crate::decide::model::specificity(entry, model).is_some())
        })
    }

    /// The key's own model list (empty without one).
    pub fn model_names(&self) -> Vec<&str> {
        let Some(start) = self.models else {
            return Vec::new();
        };
        let mut r = self.list_at(start);
        let count = r.u16().unwrap_or(0);
        (0..count).map_while(|_| r.str()).collect()
    }

    /// Whether the key restricts where requests may come from.
    pub fn restricts_ips(&self) -> bool {
        self.ips.is_some() || self.flags & IPS_UNUSABLE != 0
    }

    /// Whether the key's allowlist admits the client address (`None`: unknown).
    pub fn admits(&self, ip: Option<IpAddr>) -> bool {
        if !self.restricts_ips() {
            return true;
        }
        let (Some(start), Some(ip)) = (self.ips, ip.map(client_ip::normalize)) else {
            return false;
        };
        let mut r = self.list_at(start);
        let count = r.u16().unwrap_or(0);
        (0..count).any(|_| r.net().is_some_and(|net| net.contains(&ip)))
    }
}

/// The key whose secret hashes to `hash`, if it is live in the loaded snapshot of `epoch`.
pub fn lookup(
    shared: &impl SharedData,
    hash: &KeyHash,
    epoch: u32,
) -> Result<Option<Entry>, HostError> {
    let Some((value, _)) = shared.get(&name(hash))? else {
        return Ok(None);
    };
    Ok(decode(value).filter(|e| e.epoch >= epoch))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn record() -> KeyRecord {
        KeyRecord::plain("key_0123456789abcdef", "dev-local", "sk-test")
    }

    fn round_trip(record: &KeyRecord) -> Entry {
        let (_, value) = encode(record, 7).unwrap();
        decode(value).unwrap()
    }

    #[test]
    fn names_are_short_enough_to_live_inside_envoys_map_node() {
        let n = name(&secret::hash("sk-test"));
        assert_eq!(n.len(), 21);
        assert!(n.starts_with('k'));
        assert_ne!(n, name(&secret::hash("sk-other")));
    }

    #[test]
    fn a_plain_key_round_trips_in_a_small_value() {
        let r = record();
        let (name, value) = encode(&r, 7).unwrap();
        assert_eq!(name, super::name(&secret::hash("sk-test")));
        assert!(value.len() <= 64, "{} bytes", value.len());
        let e = decode(value).unwrap();
        assert!(e.enabled());
        assert_eq!(e.epoch, 7);
        assert_eq!(
            (e.id(), e.name(), e.group(), e.account()),
            ("key_0123456789abcdef", "dev-local", "default", "default")
        );
        assert_eq!((e.expires_at, e.remaining_quota), (None, None));
        assert!(!e.restricts_models() && e.allows_model("anything"));
        assert!(!e.restricts_ips() && e.admits(None));
        assert!(!e.limits.any());
    }

    #[test]
    fn a_budget_period_round_trips_and_resets_the_quota_at_its_end() {
        let mut r = record();
        r.remaining_quota = Some(-4);
        r.period_end = Some(1_000);
        r.period_quota = Some(i64::MAX);
        let e = round_trip(&r);
        assert_eq!(
            e.period,
            Some(Reset {
                at: 1_000,
                to: i64::MAX
            })
        );
        assert_eq!(e.remaining_at(999), Some(-4));
        assert_eq!(e.remaining_at(1_000), Some(i64::MAX));
        assert_eq!(e.remaining_at(i64::MIN), Some(-4));
        assert_eq!(
            e.quota,
            Some(i64::MAX),
            "a period's quota is the key's quota"
        );
        // An unlimited key has no period to reset, whatever the record says.
        r.remaining_quota = None;
        r.quota = Some(5);
        let e = round_trip(&r);
        assert_eq!(
            (e.period, e.remaining_at(5_000), e.quota),
            (None, None, None)
        );
    }

    #[test]
    fn a_quota_that_never_starts_afresh_round_trips_without_a_period() {
        let mut r = record();
        r.remaining_quota = Some(-4);
        for quota in [0, 1_000, i64::MAX, i64::MIN] {
            r.quota = Some(quota);
            let e = round_trip(&r);
            assert_eq!((e.period, e.quota), (None, Some(quota)));
            assert_eq!(e.remaining_at(i64::MAX), Some(-4), "never reset");
        }
        // From a key-service that does not send it: unknown.
        r.quota = None;
        assert_eq!(round_trip(&r).quota, None);
        // What a filter built before reads in such an entry: a period that never ends.
        r.quota = Some(1_000);
        let (_, value) = encode(&r, 7).unwrap();
        let at = value.len() - 16;
        assert_eq!(value[at..at + 8], i64::MAX.to_le_bytes());
    }

    #[test]
    fn model_caps_round_trip_and_the_most_specific_counts() {
        let cap = |model: &str, unit, limit, period_end| ModelCap {
            model: model.into(),
            unit,
            limit,
            used: 3,
            period_end,
        };
        let mut r = record();
        r.model_caps = vec![
            cap("claude-*", CapUnit::Credits, 100, Some(1_000)),
            cap("claude-opus-*", CapUnit::Tokens, i64::MAX, None),
            cap("gpt-4o", CapUnit::Credits, 0, Some(i64::MIN)),
        ];
        // With and without the other optional blocks before the tail.
        for period in [None, Some(9)] {
            r.remaining_quota = period;
            r.period_end = period;
            r.period_quota = period;
            let e = round_trip(&r);
            assert!(e.has_caps());
            assert_eq!(e.cap_for("claude-opus-4"), Some(r.model_caps[1].clone()));
            assert_eq!(e.cap_for("claude-haiku"), Some(r.model_caps[0].clone()));
            assert_eq!(e.cap_for("gpt-4o"), Some(r.model_caps[2].clone()));
            assert_eq!(e.cap_for("gpt-4o-mini"), None);
        }
        let c = &r.model_caps[0];
        assert_eq!((c.left_at(999), c.left_at(1_000)), (97, 100));
        assert_eq!(
            cap("x", CapUnit::Credits, i64::MIN, None).left_at(0),
            i64::MIN
        );
        // A key without caps has none; a cut-off tail makes the value unreadable.
        assert!(!round_trip(&record()).has_caps());
        let (_, mut value) = encode(&r, 7).unwrap();
        value.pop();
        assert!(decode(value).is_none());
    }

    #[test]
    fn every_optional_field_round_trips() {
        let mut r = record();
        r.enabled = false;
        r.expires_at = Some(-5);
        r.remaining_quota = Some(i64::MAX);
        r.models = vec!["gpt-4o".into(), "claude-3-5-haiku".into()];
        r.ip_allowlist = vec!["10.0.0.0/8".into(), "2001:db8::/32".into(), "junk".into()];
        r.name = "ünïcode name".into();
        r.rpm = Some(60);
        r.max_parallel = Some(u64::MAX);
        let e = round_trip(&r);
        assert_eq!(
            e.limits,
            Limits {
                rpm: Some(60),
                tpm: None,
                max_parallel: Some(u64::MAX)
            }
        );
        assert!(!e.enabled());
        assert_eq!(e.expires_at, Some(-5));
        assert_eq!(e.remaining_quota, Some(i64::MAX));
        assert_eq!(e.name(), "ünïcode name");
        assert!(e.restricts_models());
        assert!(e.allows_model("gpt-4o") && e.allows_model("claude-3-5-haiku"));
        assert!(!e.allows_model("gpt-4") && !e.allows_model(""));
        assert!(e.restricts_ips());
        for (ip, admitted) in [
            ("10.1.2.3", true),
            ("::ffff:10.1.2.3", true),
            ("11.1.2.3", false),
            ("2001:db8::7", true),
            ("2001:db9::7", false),
        ] {
            assert_eq!(e.admits(Some(ip.parse().unwrap())), admitted, "{ip}");
        }
        assert!(!e.admits(None));
    }

    #[test]
    fn an_allowlist_of_garbage_admits_nobody() {
        let mut r = record();
        r.ip_allowlist = vec!["not-an-ip".into()];
        let e = round_trip(&r);
        assert!(e.restricts_ips());
        assert!(!e.admits(Some("10.0.0.1".parse().unwrap())));
    }

    #[test]
    fn revoked_truncated_and_foreign_values_decode_to_nothing() {
        assert_eq!(decode(Vec::new()), None);
        let mut r = record();
        r.models = vec!["gpt-4o".into()];
        r.ip_allowlist = vec!["10.0.0.0/8".into()];
        r.expires_at = Some(1);
        r.tpm = Some(1_000);
        let (_, value) = encode(&r, 1).unwrap();
        for cut in 0..value.len() {
            assert_eq!(decode(value[..cut].to_vec()), None, "cut at {cut}");
        }
        let mut foreign = value.clone();
        foreign[0] = 99;
        assert_eq!(decode(foreign), None);
        // A string that is not UTF-8 is refused, not read.
        let mut bad = encode(&record(), 1).unwrap().1;
        let at = bad.len() - 1;
        bad[at] = 0xff;
        assert_eq!(decode(bad), None);
    }

    #[test]
    fn records_that_cannot_be_stored_are_refused() {
        let mut r = record();
        r.hash = "nope".into();
        assert_eq!(encode(&r, 1), Err(EncodeError::BadHash));
        let mut r = record();
        r.name = "x".repeat(70_000);
        assert_eq!(encode(&r, 1), Err(EncodeError::TooLong));
    }
}
