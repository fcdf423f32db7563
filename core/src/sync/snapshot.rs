//! The key snapshot: the wire format the key-service serves on `GET /filter/v1/snapshot`,
//! and the groups and accounts tables every VM keeps (keys themselves live in shared
//! data, see `shared`).
//!
//! Keys travel only as SHA-256 hashes (lower-case hex). Times are Unix seconds.

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};

use serde::de::value::{
    BoolDeserializer, F64Deserializer, I64Deserializer, StrDeserializer, StringDeserializer,
    U64Deserializer,
};
use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::decide::model::ModelList;
use crate::usage::pricing::Price;

/// `GET /filter/v1/snapshot` response body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SnapshotWire {
    /// Version of the key data this snapshot reflects; grows with every change.
    pub version: u64,
    /// `true` for an answer to `?since=V`: `keys` then holds only the keys changed after
    /// version V (as they are now) and `revoked` the hashes taken out of service since
    /// (rotated away, deleted). `false`: one page of the full snapshot, keys in hash order.
    #[serde(default)]
    pub delta: bool,
    /// Read record by record: one that cannot be read is skipped and counted
    /// (`KeyRecords::unreadable`), never failing its page.
    pub keys: KeyRecords,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revoked: Vec<String>,
    /// In a full snapshot, the cursor (`?after=`) of the next page; absent on the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    /// Every group's model list. A snapshot without groups restricts no model by group.
    #[serde(default)]
    pub groups: Vec<GroupRecord>,
    /// Every account's balance. A snapshot without accounts limits no key by balance.
    #[serde(default)]
    pub accounts: Vec<AccountRecord>,
    /// Every model's prices, to estimate and settle what a request costs (`ledger`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prices: Vec<PriceRecord>,
}

/// What the leader needs of an answer before reading all of it: whether it is a delta,
/// and the cursor of the next page. Deserialized alone, it skips the keys without
/// building them, several times faster than the whole answer.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct PageHead {
    #[serde(default)]
    pub delta: bool,
    #[serde(default)]
    pub next: Option<String>,
}

/// The groups and accounts of a snapshot: small, sent whole with every answer, stored in
/// one shared-data entry and read into each VM's `Tables`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TablesWire {
    #[serde(default)]
    pub groups: Vec<GroupRecord>,
    #[serde(default)]
    pub accounts: Vec<AccountRecord>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prices: Vec<PriceRecord>,
}

/// A model's prices in credits per 1,000,000 tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PriceRecord {
    pub name: String,
    pub input: f64,
    pub output: f64,
    pub cached_input: f64,
    /// For prompt-cache writes (absent: the input price).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write: Option<f64>,
    /// Credits per call (absent from key-services older than this filter: none).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub per_request: f64,
}

fn is_zero(n: &f64) -> bool {
    *n == 0.0
}

/// An account as the filter needs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccountRecord {
    pub name: String,
    /// Credits its keys may still spend: its balance, or what its spending limit leaves of
    /// the period if that is less; `None` = unlimited.
    pub balance: Option<i64>,
    /// An account with a spending limit per period: when the period ends (Unix seconds),
    /// and what its keys may spend from then on (the lesser of its balance and the limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_end: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_balance: Option<i64>,
}

/// A limit that starts afresh: from `at` (Unix seconds) on, it is `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reset {
    pub at: i64,
    pub to: i64,
}

impl Reset {
    /// Reads the pair of fields a record carries it in; both or nothing.
    pub fn of(at: Option<i64>, to: Option<i64>) -> Option<Reset> {
        Some(Reset { at: at?, to: to? })
    }

    /// `limit` at `now`: `to` once the period has ended (the snapshot has not caught up
    /// with the new one yet), else `limit` as the snapshot has it. `None` stays unlimited.
    pub fn apply(reset: Option<Reset>, limit: Option<i64>, now: i64) -> Option<i64> {
        match reset {
            Some(reset) if now >= reset.at && limit.is_some() => Some(reset.to),
            _ => limit,
        }
    }
}

/// A group as the filter needs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupRecord {
    pub name: String,
    /// Models the group's keys may use; `["*"]` = all.
    pub models: Vec<String>,
    /// Price multiplier of the group's keys.
    #[serde(default = "one")]
    pub ratio: f64,
    /// Requests per minute each key of the group may make; `None` = no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u64>,
    /// Tokens per minute each key of the group may use; `None` = no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
}

fn one() -> f64 {
    1.0
}

/// One key as the filter needs to know it. Never carries the secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub id: String,
    pub name: String,
    /// SHA-256 of the secret, 64 lower-case hex digits.
    pub hash: String,
    pub account: String,
    pub group: String,
    pub enabled: bool,
    /// Unix seconds after which the key is refused; `None` = never expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    /// Addresses and CIDRs requests may come from; empty = any source.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_allowlist: Vec<String>,
    /// Models this key may use, within its group's; empty = every model the group allows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    /// Credits the key may still spend (`quota - used_quota`) in its budget period;
    /// `None` = unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining_quota: Option<i64>,
    /// A key whose quota starts afresh each period: when the current period ends (Unix
    /// seconds) and its quota per period, which it may spend from then on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_end: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_quota: Option<i64>,
    /// A limited key's quota (per period, for a key with one): what the one-api-style
    /// billing answers (`decide::billing`) show as its limit, with `quota -
    /// remaining_quota` as what it used. A key-service that predates it sends none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<i64>,
    /// Limits per model: the most specific one that names a request's model counts it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub model_caps: Vec<ModelCap>,
    /// The key's own rate limits (its group's may be stricter); `None` = no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
    /// Requests of the key in flight at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel: Option<u64>,
}

#[cfg(test)]
impl KeyRecord {
    /// An enabled key of the default account and group, with no limit of any kind, whose
    /// secret is `secret`: what tests start from.
    pub(crate) fn plain(id: &str, name: &str, secret: &str) -> KeyRecord {
        use crate::keys::secret::{hash, hash_hex};
        KeyRecord {
            id: id.into(),
            name: name.into(),
            hash: hash_hex(&hash(secret)),
            account: "default".into(),
            group: "default".into(),
            enabled: true,
            expires_at: None,
            ip_allowlist: vec![],
            models: vec![],
            remaining_quota: None,
            period_end: None,
            period_quota: None,
            quota: None,
            model_caps: vec![],
            rpm: None,
            tpm: None,
            max_parallel: None,
        }
    }
}

/// What a model cap counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CapUnit {
    /// Credits, as the key's quota.
    #[default]
    Credits,
    /// Input and output tokens.
    Tokens,
}

impl CapUnit {
    /// As the snapshot, the API and lease subjects name it.
    pub fn as_str(self) -> &'static str {
        match self {
            CapUnit::Credits => "credits",
            CapUnit::Tokens => "tokens",
        }
    }
}

/// A key's limit on the models a name or pattern (`claude-opus-*`) covers, as the
/// key-service keeps it: `used` of `limit` in the period that ends at `period_end` (none:
/// it never resets), from which the whole `limit` is there again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelCap {
    pub model: String,
    #[serde(default)]
    pub unit: CapUnit,
    pub limit: i64,
    #[serde(default)]
    pub used: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_end: Option<i64>,
}

impl ModelCap {
    /// What the cap leaves at `now` (Unix seconds).
    pub fn left_at(&self, now: i64) -> i64 {
        match self.period_end {
            Some(end) if now >= end => self.limit,
            _ => self.limit.saturating_sub(self.used),
        }
    }
}

/// The `keys` of a snapshot answer. A record the filter cannot read (a number out of its
/// range, a string where a number belongs, not an object at all) is skipped and counted
/// rather than failing the page: one bad row once failed every page, and with them every
/// Envoy's key sync. Reads as the `Vec` of the records that could be read.
///
/// Each record is read as it streams by, into the same field types `KeyRecord`'s own
/// `Deserialize` would use (their visitors decide what is valid), so a page costs no more
/// allocations than a `Vec<KeyRecord>` would: no per-record buffer or `Value`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeyRecords {
    records: Vec<KeyRecord>,
    unreadable: usize,
}

impl KeyRecords {
    /// How many records of the answer could not be read and were left out.
    pub fn unreadable(&self) -> usize {
        self.unreadable
    }
}

impl Deref for KeyRecords {
    type Target = Vec<KeyRecord>;
    fn deref(&self) -> &Vec<KeyRecord> {
        &self.records
    }
}

impl DerefMut for KeyRecords {
    fn deref_mut(&mut self) -> &mut Vec<KeyRecord> {
        &mut self.records
    }
}

impl From<Vec<KeyRecord>> for KeyRecords {
    fn from(records: Vec<KeyRecord>) -> Self {
        KeyRecords {
            records,
            unreadable: 0,
        }
    }
}

impl FromIterator<KeyRecord> for KeyRecords {
    fn from_iter<I: IntoIterator<Item = KeyRecord>>(iter: I) -> Self {
        Vec::from_iter(iter).into()
    }
}

impl<'a> IntoIterator for &'a KeyRecords {
    type Item = &'a KeyRecord;
    type IntoIter = std::slice::Iter<'a, KeyRecord>;
    fn into_iter(self) -> Self::IntoIter {
        self.records.iter()
    }
}

impl IntoIterator for KeyRecords {
    type Item = KeyRecord;
    type IntoIter = std::vec::IntoIter<KeyRecord>;
    fn into_iter(self) -> Self::IntoIter {
        self.records.into_iter()
    }
}

impl Serialize for KeyRecords {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.records.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for KeyRecords {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Records;
        impl<'de> Visitor<'de> for Records {
            type Value = KeyRecords;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of key records")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<KeyRecords, A::Error> {
                // The hint comes from the peer: bounded, so a lying one cannot reserve much.
                let mut keys = KeyRecords {
                    records: Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096)),
                    unreadable: 0,
                };
                while let Some(Readable(record)) = seq.next_element()? {
                    match record {
                        Some(record) => keys.records.push(record),
                        None => keys.unreadable = keys.unreadable.saturating_add(1),
                    }
                }
                Ok(keys)
            }
        }
        deserializer.deserialize_seq(Records)
    }
}

/// Visitor methods that consume what they are handed (so the stream stays in step) and
/// read as `$bad`, for each kind of value named: whatever a visitor cannot use. Only a
/// page that is not JSON at all (or nests too deep for the parser) still fails.
macro_rules! skip_visits {
    ($bad:expr; $($kind:ident),*) => { $( skip_visits!(@ $bad; $kind); )* };
    (@ $bad:expr; bool) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> { Ok($bad) }
    };
    (@ $bad:expr; i64) => {
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> { Ok($bad) }
    };
    (@ $bad:expr; u64) => {
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> { Ok($bad) }
    };
    (@ $bad:expr; f64) => {
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> { Ok($bad) }
    };
    (@ $bad:expr; str) => {
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> { Ok($bad) }
    };
    (@ $bad:expr; bytes) => {
        fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Self::Value, E> { Ok($bad) }
    };
    (@ $bad:expr; unit) => {
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> { Ok($bad) }
    };
    (@ $bad:expr; none) => {
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> { Ok($bad) }
    };
    (@ $bad:expr; some) => {
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            IgnoredAny::deserialize(d)?;
            Ok($bad)
        }
    };
    (@ $bad:expr; seq) => {
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok($bad)
        }
    };
    (@ $bad:expr; map) => {
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            Ok($bad)
        }
    };
}

/// `$value`'s content, or (from a record visitor) an unreadable record if it is missing.
macro_rules! some_or_return {
    ($value:expr) => {
        match $value {
            Some(value) => value,
            None => return Ok(None),
        }
    };
}

/// One element of `keys`: the record, or `None` when it cannot be read.
struct Readable(Option<KeyRecord>);

impl<'de> Deserialize<'de> for Readable {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RecordVisitor).map(Readable)
    }
}

/// `KeyRecord`'s fields by their JSON names; `Other` for any other (ignored, as the
/// derived `Deserialize` ignores unknown fields).
enum Field {
    Id,
    Name,
    Hash,
    Account,
    Group,
    Enabled,
    ExpiresAt,
    IpAllowlist,
    Models,
    RemainingQuota,
    PeriodEnd,
    PeriodQuota,
    Quota,
    ModelCaps,
    Rpm,
    Tpm,
    MaxParallel,
    Other,
}

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Names;
        impl Visitor<'_> for Names {
            type Value = Field;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: de::Error>(self, name: &str) -> Result<Field, E> {
                Ok(match name {
                    "id" => Field::Id,
                    "name" => Field::Name,
                    "hash" => Field::Hash,
                    "account" => Field::Account,
                    "group" => Field::Group,
                    "enabled" => Field::Enabled,
                    "expires_at" => Field::ExpiresAt,
                    "ip_allowlist" => Field::IpAllowlist,
                    "models" => Field::Models,
                    "remaining_quota" => Field::RemainingQuota,
                    "period_end" => Field::PeriodEnd,
                    "period_quota" => Field::PeriodQuota,
                    "quota" => Field::Quota,
                    "model_caps" => Field::ModelCaps,
                    "rpm" => Field::Rpm,
                    "tpm" => Field::Tpm,
                    "max_parallel" => Field::MaxParallel,
                    _ => Field::Other,
                })
            }
        }
        deserializer.deserialize_identifier(Names)
    }
}

/// Reads one record; `None` if it is not an object, a field has the wrong type or is out
/// of its type's range, a field comes twice, or a required one is missing.
struct RecordVisitor;

impl<'de> Visitor<'de> for RecordVisitor {
    type Value = Option<KeyRecord>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key record")
    }

    skip_visits!(None; bool, i64, u64, f64, str, bytes, unit, none, some, seq);

    // An object is what a record is.
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut id, mut name, mut hash, mut account, mut group, mut enabled) =
            (None, None, None, None, None, None);
        let (mut expires_at, mut ip_allowlist, mut models, mut remaining_quota) =
            (None, None, None, None);
        let (mut rpm, mut tpm, mut max_parallel) = (None, None, None);
        let (mut period_end, mut period_quota, mut quota, mut model_caps) =
            (None, None, None, None);
        let mut readable = true;
        while let Some(field) = map.next_key::<Field>()? {
            // Reads the field's value into its slot; a bad or repeated value spoils the
            // record, but the rest of it is still read through.
            macro_rules! read {
                ($slot:ident, $kind:ty) => {{
                    let value = map.next_value::<$kind>()?.0;
                    readable &= value.is_some() && $slot.is_none();
                    $slot = value;
                }};
            }
            match field {
                Field::Id => read!(id, Valid<String>),
                Field::Name => read!(name, Valid<String>),
                Field::Hash => read!(hash, Valid<String>),
                Field::Account => read!(account, Valid<String>),
                Field::Group => read!(group, Valid<String>),
                Field::Enabled => read!(enabled, Valid<bool>),
                Field::ExpiresAt => read!(expires_at, ValidOption<i64>),
                Field::IpAllowlist => read!(ip_allowlist, ValidStrings),
                Field::Models => read!(models, ValidStrings),
                Field::RemainingQuota => read!(remaining_quota, ValidOption<i64>),
                Field::PeriodEnd => read!(period_end, ValidOption<i64>),
                Field::PeriodQuota => read!(period_quota, ValidOption<i64>),
                Field::Quota => read!(quota, ValidOption<i64>),
                Field::ModelCaps => read!(model_caps, ValidCaps),
                Field::Rpm => read!(rpm, ValidOption<u64>),
                Field::Tpm => read!(tpm, ValidOption<u64>),
                Field::MaxParallel => read!(max_parallel, ValidOption<u64>),
                Field::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        if !readable {
            return Ok(None);
        }
        // The required fields, then the defaulted ones, as `KeyRecord` declares them.
        Ok(Some(KeyRecord {
            id: some_or_return!(id),
            name: some_or_return!(name),
            hash: some_or_return!(hash),
            account: some_or_return!(account),
            group: some_or_return!(group),
            enabled: some_or_return!(enabled),
            expires_at: expires_at.flatten(),
            ip_allowlist: ip_allowlist.unwrap_or_default(),
            models: models.unwrap_or_default(),
            remaining_quota: remaining_quota.flatten(),
            period_end: period_end.flatten(),
            period_quota: period_quota.flatten(),
            quota: quota.flatten(),
            model_caps: model_caps.unwrap_or_default(),
            rpm: rpm.flatten(),
            tpm: tpm.flatten(),
            max_parallel: max_parallel.flatten(),
        }))
    }
}

/// A field value that `T`'s own `Deserialize` accepts, or `None` (the value consumed all
/// the same). `T` is a scalar (string, bool, integer): the value the parser hands over is
/// given again to `T`, whose visitor decides, so what is valid here is exactly what the
/// derived `KeyRecord` would take.
struct Valid<T>(Option<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Valid<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(Scalar(PhantomData)).map(Valid)
    }
}

/// `Option<T>`'s field: `Some(None)` for null, `Some(Some(t))` for a valid `T`, `None`
/// for anything else.
struct ValidOption<T>(Option<Option<T>>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for ValidOption<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(ValidOption(
            match Option::<Valid<T>>::deserialize(deserializer)? {
                None => Some(None),
                Some(Valid(Some(value))) => Some(Some(value)),
                Some(Valid(None)) => None,
            },
        ))
    }
}

struct Scalar<T>(PhantomData<T>);

/// `T` from one of serde's value deserializers; `None` if `T` refuses it.
fn refed<'de, T: Deserialize<'de>, D>(value: D) -> Option<T>
where
    D: Deserializer<'de, Error = de::value::Error>,
{
    T::deserialize(value).ok()
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for Scalar<T> {
    type Value = Option<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a field value")
    }

    skip_visits!(None; bytes, none, some, seq, map);

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(refed(BoolDeserializer::new(v)))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(refed(I64Deserializer::new(v)))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(refed(U64Deserializer::new(v)))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(refed(F64Deserializer::new(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(refed(StrDeserializer::new(v)))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(refed(StringDeserializer::new(v)))
    }
    // JSON null: no scalar.
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

/// A list of strings (`ip_allowlist`, `models`), or `None` if the value is anything else
/// or holds anything else.
struct ValidStrings(Option<Vec<String>>);

impl<'de> Deserialize<'de> for ValidStrings {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Strings;
        impl<'de> Visitor<'de> for Strings {
            type Value = Option<Vec<String>>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of strings")
            }
            skip_visits!(None; bool, i64, u64, f64, str, bytes, unit, none, some, map);
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut list = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
                let mut readable = true;
                while let Some(Valid(item)) = seq.next_element::<Valid<String>>()? {
                    match item {
                        Some(item) if readable => list.push(item),
                        _ => readable = false,
                    }
                }
                Ok(readable.then_some(list))
            }
        }
        deserializer.deserialize_any(Strings).map(ValidStrings)
    }
}

/// A list of model caps, or `None` if the value is not one. Rare and short, so read
/// through a `Value`, which then decides exactly as the derived `Deserialize` does.
struct ValidCaps(Option<Vec<ModelCap>>);

impl<'de> Deserialize<'de> for ValidCaps {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        Ok(ValidCaps(serde_json::from_value(value).ok()))
    }
}

/// Each group's model list and each account's balance, as one VM looks them up.
#[derive(Debug, Default, PartialEq)]
pub struct Tables {
    groups: HashMap<String, ModelList>,
    /// Whether the snapshot carried groups at all; if it did, an unknown group allows no
    /// model (fail closed), if not, groups restrict nothing.
    groups_known: bool,
    accounts: HashMap<String, (Option<i64>, Option<Reset>)>,
    /// Likewise for accounts: an unknown account has nothing to spend.
    accounts_known: bool,
    ratios: HashMap<String, f64>,
    prices: HashMap<String, Price>,
    /// `(rpm, tpm)` of the groups that have either.
    rates: HashMap<String, (Option<u64>, Option<u64>)>,
}

static ANY_MODEL: ModelList = ModelList::Any;
static NO_MODEL: ModelList = ModelList::Only(Vec::new());

impl Tables {
    pub fn new(wire: TablesWire) -> Tables {
        Tables {
            groups_known: !wire.groups.is_empty(),
            rates: wire
                .groups
                .iter()
                .filter(|g| g.rpm.is_some() || g.tpm.is_some())
                .map(|g| (g.name.clone(), (g.rpm, g.tpm)))
                .collect(),
            ratios: wire
                .groups
                .iter()
                .map(|g| (g.name.clone(), g.ratio))
                .collect(),
            prices: wire
                .prices
                .into_iter()
                .map(|p| {
                    let price = Price {
                        input: p.input,
                        cached_input: p.cached_input,
                        output: p.output,
                        cache_write: p.cache_write.unwrap_or(p.input),
                        per_request: p.per_request,
                    };
                    (p.name, price)
                })
                .collect(),
            groups: wire
                .groups
                .into_iter()
                .map(|g| (g.name, ModelList::for_group(&g.models)))
                .collect(),
            accounts_known: !wire.accounts.is_empty(),
            accounts: wire
                .accounts
                .into_iter()
                .map(|a| {
                    let reset = Reset::of(a.period_end, a.period_balance);
                    (a.name, (a.balance, reset))
                })
                .collect(),
        }
    }

    /// The model list of a group.
    pub fn group_models(&self, group: &str) -> &ModelList {
        match self.groups.get(group) {
            Some(models) => models,
            None if self.groups_known => &NO_MODEL,
            None => &ANY_MODEL,
        }
    }

    /// Whether these tables name the group and the account (or name none of either): a
    /// key whose group or account they lack came with a later sync than they did.
    pub fn knows(&self, group: &str, account: &str) -> bool {
        (!self.groups_known || self.groups.contains_key(group))
            && (!self.accounts_known || self.accounts.contains_key(account))
    }

    /// Whether an account has credits to spend at `now` (Unix seconds).
    pub fn account_has_credit(&self, account: &str, now: i64) -> bool {
        match self.accounts.get(account) {
            Some(_) => self.balance(account, now).is_none_or(|b| b > 0),
            None => !self.accounts_known,
        }
    }

    /// What an account's keys may spend at `now` (Unix seconds); `None` = unlimited (or
    /// no accounts sent).
    pub fn balance(&self, account: &str, now: i64) -> Option<i64> {
        match self.accounts.get(account) {
            Some((balance, reset)) => Reset::apply(*reset, *balance, now),
            None if self.accounts_known => Some(0),
            None => None,
        }
    }

    /// A group's price multiplier (1 for a group the snapshot does not name).
    pub fn ratio(&self, group: &str) -> f64 {
        self.ratios.get(group).copied().unwrap_or(1.0)
    }

    /// A group's `(rpm, tpm)` limits for each of its keys; `None` = no limit.
    pub fn group_rates(&self, group: &str) -> (Option<u64>, Option<u64>) {
        if self.rates.is_empty() {
            return (None, None);
        }
        self.rates.get(group).copied().unwrap_or((None, None))
    }

    /// A model's prices: its own, else the most specific pattern's (`gpt-4o-*`, see
    /// `model::specificity`); `None` = nobody priced it.
    pub fn price(&self, model: &str) -> Option<Price> {
        crate::decide::model::lookup(&self.prices, model)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn wire_format_parses_with_optional_fields_absent() {
        let json = r#"{"version":3,"keys":[{"id":"k","name":"n","hash":"00","account":"a",
            "group":"g","enabled":false}]}"#;
        let wire: SnapshotWire = serde_json::from_str(json).unwrap();
        assert_eq!(wire.keys[0].expires_at, None);
        assert!(!wire.keys[0].enabled);
        assert!(wire.keys[0].models.is_empty());
        assert!(wire.groups.is_empty());
        assert!(wire.revoked.is_empty());
        assert_eq!(wire.next, None);
    }

    #[test]
    fn account_balances_fail_closed_only_when_accounts_were_sent() {
        let account = |name: &str, balance| AccountRecord {
            name: name.into(),
            balance,
            period_end: None,
            period_balance: None,
        };
        let tables = Tables::new(TablesWire {
            groups: vec![],
            accounts: vec![
                account("rich", None),
                account("some", Some(5)),
                account("broke", Some(0)),
                account("owing", Some(-3)),
            ],
            prices: vec![],
        });
        let expected = [
            ("rich", true),
            ("some", true),
            ("broke", false),
            ("owing", false),
            ("vanished", false),
        ];
        for (name, has) in expected {
            assert_eq!(tables.account_has_credit(name, 0), has, "account {name}");
        }
        assert!(Tables::default().account_has_credit("anyone", 0));
        assert_eq!(tables.balance("some", 0), Some(5));
        assert_eq!(tables.balance("vanished", 0), Some(0));
        assert!(tables.knows("any group: none were sent", "some"));
        assert!(!tables.knows("any group: none were sent", "vanished"));
        assert_eq!(Tables::default().balance("anyone", 0), None);
    }

    #[test]
    fn group_model_lists_fail_closed_only_when_groups_were_sent() {
        assert_eq!(Tables::default().group_models("any"), &ModelList::Any);
        let tables = Tables::new(TablesWire {
            groups: vec![
                GroupRecord {
                    name: "default".into(),
                    models: vec!["*".into()],
                    ratio: 1.0,
                    rpm: None,
                    tpm: None,
                },
                GroupRecord {
                    name: "cheap".into(),
                    models: vec!["gpt-4o-mini".into()],
                    ratio: 0.5,
                    rpm: Some(60),
                    tpm: None,
                },
            ],
            accounts: vec![],
            prices: vec![PriceRecord {
                name: "gpt-4o-mini".into(),
                input: 0.15,
                output: 0.6,
                cached_input: 0.075,
                cache_write: None,
                per_request: 0.0,
            }],
        });
        assert_eq!((tables.ratio("cheap"), tables.ratio("unknown")), (0.5, 1.0));
        assert_eq!(tables.group_rates("cheap"), (Some(60), None));
        assert_eq!(tables.group_rates("default"), (None, None));
        assert_eq!(tables.price("gpt-4o-mini").map(|p| p.output), Some(0.6));
        assert_eq!(tables.price("gpt-4o"), None);
        assert_eq!(tables.group_models("default"), &ModelList::Any);
        assert!(tables.group_models("cheap").allows("gpt-4o-mini"));
        assert!(!tables.group_models("cheap").allows("gpt-4o"));
        assert!(!tables.group_models("unknown").allows("gpt-4o-mini"));
        assert!(tables.knows("cheap", "any account: none were sent"));
        assert!(!tables.knows("unknown", "any account: none were sent"));
    }
}

#[cfg(test)]
mod record_tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const GOOD_A: &str = r#"{"id":"a","name":"a","hash":"00","account":"x","group":"g",
        "enabled":true,"remaining_quota":5}"#;
    const GOOD_B: &str = r#"{"id":"b","name":"b","hash":"11","account":"x","group":"g",
        "enabled":false,"models":["m"],"rpm":3,"unknown":{"x":[1]}}"#;

    fn page(records: &[&str]) -> SnapshotWire {
        let json = format!(
            r#"{{"version":9,"keys":[{}],"next":"c"}}"#,
            records.join(",")
        );
        serde_json::from_str(&json).unwrap()
    }

    fn ids(wire: &SnapshotWire) -> Vec<&str> {
        wire.keys.iter().map(|k| k.id.as_str()).collect()
    }

    #[test]
    fn one_unreadable_record_among_good_ones_is_skipped_and_counted() {
        // The record that wedged every Envoy: a used_quota past i64 had made SQLite's
        // remaining_quota a REAL.
        let bad = r#"{"id":"c","name":"c","hash":"22","account":"x","group":"g",
            "enabled":true,"remaining_quota":-1.5e19}"#;
        let wire = page(&[GOOD_A, bad, GOOD_B]);
        assert_eq!(ids(&wire), ["a", "b"]);
        assert_eq!(wire.keys.unreadable(), 1);
        // The rest of the answer is read as before.
        assert_eq!((wire.version, wire.next.as_deref()), (9, Some("c")));
        assert_eq!(wire.keys[0].remaining_quota, Some(5));
        assert_eq!((wire.keys[1].models.len(), wire.keys[1].rpm), (1, Some(3)));
    }

    #[test]
    fn every_kind_of_unreadable_record_counts_once() {
        let bad = [
            r#"{"id":"c","name":"c","hash":"22","account":"x","group":"g","enabled":"yes"}"#,
            r#"{"id":5,"name":"c","hash":"22","account":"x","group":"g","enabled":true}"#,
            r#"{"id":"c","name":"c","hash":"22","account":"x","group":"g","enabled":true,
                "rpm":-1}"#,
            r#"{"id":"c","name":"c","hash":"22","account":"x","group":"g","enabled":true,
                "tpm":"ten"}"#,
            r#"{"id":"c","name":"c","hash":"22","account":"x","group":"g","enabled":true,
                "expires_at":1.5}"#,
            r#"{"id":"c","name":"c","hash":"22","account":"x","group":"g","enabled":true,
                "models":["m",1]}"#,
            r#"{"id":"c","name":"c","hash":"22","account":"x","group":"g","enabled":true,
                "ip_allowlist":null}"#,
            r#"{"id":"c","id":"d","name":"c","hash":"22","account":"x","group":"g",
                "enabled":true}"#,
            r#"{"name":"c","hash":"22","account":"x","group":"g","enabled":true}"#,
            r#"{"id":"c","name":"c","hash":{"h":[]},"account":"x","group":"g","enabled":true}"#,
            r#"[1,{"id":"c"}]"#,
            r#""a string""#,
            "null",
            "18446744073709551616",
        ];
        for record in bad {
            let wire = page(&[GOOD_A, record, GOOD_B]);
            assert_eq!(ids(&wire), ["a", "b"], "{record}");
            assert_eq!(wire.keys.unreadable(), 1, "{record}");
        }
    }

    #[test]
    fn records_read_as_the_derived_deserialize_reads_them() {
        let full = KeyRecord {
            id: "id".into(),
            name: "name \"quoted\" \u{e9}".into(),
            hash: "ab".repeat(32),
            account: "acct".into(),
            group: "grp".into(),
            enabled: true,
            expires_at: Some(-7),
            ip_allowlist: vec!["10.0.0.0/8".into()],
            models: vec!["a".into(), "b".into()],
            remaining_quota: Some(i64::MIN),
            period_end: Some(i64::MAX),
            period_quota: Some(0),
            quota: Some(i64::MIN),
            model_caps: vec![ModelCap {
                model: "claude-*".into(),
                unit: CapUnit::Tokens,
                limit: i64::MAX,
                used: i64::MIN,
                period_end: None,
            }],
            rpm: Some(u64::MAX),
            tpm: Some(0),
            max_parallel: Some(2),
        };
        let wire = SnapshotWire {
            keys: vec![full.clone()].into(),
            ..Default::default()
        };
        let json = serde_json::to_string(&wire).unwrap();
        let back: SnapshotWire = serde_json::from_str(&json).unwrap();
        assert_eq!(back, wire);
        // Nulls where the derived one takes them, and from a `Value` as from text.
        let value = serde_json::json!({"keys": [{"id": "id", "name": "n", "hash": "h",
            "account": "a", "group": "g", "enabled": false, "expires_at": null,
            "remaining_quota": null, "rpm": null}, 7], "version": 1});
        let wire: SnapshotWire = serde_json::from_value(value).unwrap();
        assert_eq!(ids(&wire), ["id"]);
        assert_eq!(wire.keys.unreadable(), 1);
        assert_eq!(wire.keys[0].expires_at, None);
    }

    #[test]
    fn a_page_that_is_not_json_still_fails() {
        assert!(serde_json::from_str::<SnapshotWire>(r#"{"version":1,"keys":[{"id":"#).is_err());
        assert!(serde_json::from_str::<SnapshotWire>(r#"{"version":1,"keys":{}}"#).is_err());
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod record_properties {
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;

    const FIELDS: &[&str] = &[
        "id",
        "name",
        "hash",
        "account",
        "group",
        "enabled",
        "expires_at",
        "ip_allowlist",
        "models",
        "remaining_quota",
        "period_end",
        "period_quota",
        "quota",
        "model_caps",
        "rpm",
        "tpm",
        "max_parallel",
        "other",
    ];

    fn leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            proptest::num::f64::NORMAL.prop_map(Value::from),
            "[a-z0-9\"\\\\]{0,6}".prop_map(Value::String),
        ]
    }

    /// Any JSON value, with objects that look like records (the record's field names,
    /// any values) more often than chance would make them.
    fn value() -> impl Strategy<Value = Value> {
        leaf().prop_recursive(3, 32, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec((prop::sample::select(FIELDS), inner), 0..14).prop_map(
                    |fields| {
                        Value::Object(
                            fields
                                .into_iter()
                                .map(|(name, value)| (name.to_string(), value))
                                .collect(),
                        )
                    }
                ),
            ]
        })
    }

    fn good(id: &str) -> Value {
        serde_json::json!({"id": id, "name": "n", "hash": "h", "account": "a",
            "group": "g", "enabled": true})
    }

    proptest! {
        #[test]
        fn any_value_as_a_record_is_read_or_skipped(record in value()) {
            let page = serde_json::json!({"version": 1, "keys": [good("a"), record.clone(), good("b")]});
            let text = serde_json::to_vec(&page).unwrap();
            let wire: SnapshotWire = serde_json::from_slice(&text).unwrap();
            // Exactly what the derived Deserialize takes is kept, the rest counted.
            let strict = serde_json::from_value::<KeyRecord>(record).ok();
            let ids: Vec<&str> = wire.keys.iter().map(|k| k.id.as_str()).collect();
            prop_assert_eq!(ids.first(), Some(&"a"));
            prop_assert_eq!(ids.last(), Some(&"b"));
            prop_assert_eq!(wire.keys.len() + wire.keys.unreadable(), 3);
            prop_assert_eq!(wire.keys.get(1).filter(|_| wire.keys.len() == 3), strict.as_ref());
        }

        #[test]
        fn any_bytes_as_a_page_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = serde_json::from_slice::<SnapshotWire>(&bytes);
            let mut page = br#"{"version":1,"keys":["#.to_vec();
            page.extend_from_slice(&bytes);
            let _ = serde_json::from_slice::<SnapshotWire>(&page);
        }
    }
}
