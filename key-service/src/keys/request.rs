//! What a caller asks of a key (create, edit, rotate) and the pure checks that turn it
//! into what the store takes. No clock, store or randomness here: `now` comes in, so each
//! rule is a unit test away.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;

use crate::budget::{Period, PeriodError};
use crate::error::ApiError;
use crate::expiry;
use crate::keys::caps::{self, CapRequest, Unit};
use crate::store::KeyEdit;
use crate::validate::{check_models, limit, nullable, nullable_text};

pub const NAME_MAX: usize = 64;
pub const QUANTITY_MAX: i64 = 100;
/// `-` and six base62 characters, appended to each name of a batch.
pub(super) const SUFFIX_LEN: usize = 6;

/// Body of `POST /api/v1/keys`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    pub name: String,
    #[serde(default)]
    pub account: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub expires_at: Option<String>,
    #[serde(default)]
    pub expires_in: Option<String>,
    #[serde(default)]
    pub quantity: Option<i64>,
    #[serde(default)]
    pub quota: Option<i64>,
    #[serde(default)]
    pub unlimited_quota: Option<bool>,
    #[serde(default)]
    pub models: Option<Vec<String>>,
    #[serde(default)]
    pub ip_allowlist: Option<Vec<String>>,
    /// Requests per minute; absent or `null` = no limit of the key's own.
    #[serde(default)]
    pub rpm: Option<i64>,
    /// Tokens per minute; likewise.
    #[serde(default)]
    pub tpm: Option<i64>,
    /// Requests in flight at once; likewise.
    #[serde(default)]
    pub max_parallel: Option<i64>,
    /// How often the quota starts afresh: `"total"` (never; the default), `"day"`,
    /// `"week"`, `"month"` (calendar, in the service's budget time zone) or a span such as
    /// `"72h"` or `"30d"` from the key's creation.
    #[serde(default)]
    pub quota_period: Option<String>,
    /// When the secret should be rotated by (RFC 3339); past it the key is listed as
    /// rotation due and alerted on (`key.rotation_due`).
    #[serde(default)]
    pub rotate_by: Option<String>,
    /// Limits per model: `{"claude-opus-*": {"budget": 5000, "period": "day"}}` (credits,
    /// or `"tokens"`), names and patterns as in prices; the most specific one that names a
    /// request's model counts it.
    #[serde(default)]
    pub model_caps: Option<BTreeMap<String, CapRequest>>,
}

/// A create request with defaults filled in and every field checked.
#[derive(Debug, Clone, PartialEq)]
pub struct KeySpec {
    pub name: String,
    pub account: String,
    pub group: String,
    pub expires_at: Option<i64>,
    pub quantity: usize,
    pub unlimited_quota: bool,
    pub quota: i64,
    pub models: Vec<String>,
    /// Normalised CIDRs (`10.0.0.0/8`, `192.0.2.7/32`, `2001:db8::/32`).
    pub ip_allowlist: Vec<String>,
    /// The key's own rate limits, each at least 1; `None` = none of its own.
    pub rpm: Option<i64>,
    pub tpm: Option<i64>,
    pub max_parallel: Option<i64>,
    pub quota_period: Period,
    /// Unix seconds.
    pub rotate_by: Option<i64>,
    pub model_caps: Vec<(String, Unit, i64, Period)>,
}

impl CreateKey {
    /// Checks every field and fills in defaults; `now` anchors `expires_in`. Whether the
    /// account and group exist is for the caller to ask the store.
    pub fn validate(self, now: i64) -> Result<KeySpec, ApiError> {
        let quantity = self.quantity.unwrap_or(1);
        if !(1..=QUANTITY_MAX).contains(&quantity) {
            return Err(ApiError::invalid(
                "quantity",
                format!("quantity must be between 1 and {QUANTITY_MAX}, got {quantity}"),
            ));
        }
        // Each name of a batch gets a suffix, and the result must still fit.
        let name_max = if quantity > 1 {
            NAME_MAX - 1 - SUFFIX_LEN
        } else {
            NAME_MAX
        };
        let name = check_name(self.name, name_max)?;

        let expires_at = expiry_of(self.expires_at, self.expires_in, now)?.flatten();

        let quota = check_quota(self.quota.unwrap_or(0))?;

        Ok(KeySpec {
            name,
            account: check_ref("account", self.account)?,
            group: check_ref("group", self.group)?,
            expires_at,
            quantity: usize::try_from(quantity).unwrap_or(1),
            unlimited_quota: self.unlimited_quota.unwrap_or(true),
            quota,
            models: check_models(self.models.unwrap_or_default())?,
            ip_allowlist: check_allowlist(self.ip_allowlist.unwrap_or_default())?,
            rpm: limit("rpm", self.rpm)?,
            tpm: limit("tpm", self.tpm)?,
            max_parallel: limit("max_parallel", self.max_parallel)?,
            quota_period: check_period(self.quota_period)?.unwrap_or(Period::Total),
            rotate_by: self.rotate_by.as_deref().map(rotate_by).transpose()?,
            model_caps: caps::check(self.model_caps.unwrap_or_default())?,
        })
    }
}

/// A budget period as given (`None`: not given).
fn check_period(text: Option<String>) -> Result<Option<Period>, ApiError> {
    text.map(|t| t.parse())
        .transpose()
        .map_err(|e: PeriodError| ApiError::invalid("quota_period", e.to_string()))
}

/// A rotation date (RFC 3339); one in the past is accepted (the rotation is due).
fn rotate_by(at: &str) -> Result<i64, ApiError> {
    expiry::parse_rfc3339(at).map_err(|e| ApiError::invalid("rotate_by", e.to_string()))
}

/// The expiry asked for by `expires_at` (RFC 3339) or `expires_in` (`"1h"`, `"never"`):
/// `None` when neither is given, `Some(None)` for never.
fn expiry_of(
    expires_at: Option<String>,
    expires_in: Option<String>,
    now: i64,
) -> Result<Option<Option<i64>>, ApiError> {
    match (expires_at, expires_in) {
        (Some(_), Some(_)) => Err(ApiError::invalid(
            "expires_in",
            "give expires_at or expires_in, not both",
        )),
        // A time in the past is accepted: the key is `expired`.
        (Some(at), None) => expiry::parse_rfc3339(&at)
            .map(|at| Some(Some(at)))
            .map_err(|e| ApiError::invalid("expires_at", e.to_string())),
        (None, Some(within)) => expiry::parse_expires_in(&within)
            .and_then(|e| e.expires_at(now))
            .map(Some)
            .map_err(|e| ApiError::invalid("expires_in", e.to_string())),
        (None, None) => Ok(None),
    }
}

fn check_quota(quota: i64) -> Result<i64, ApiError> {
    if quota < 0 {
        return Err(ApiError::invalid(
            "quota",
            format!("quota must be 0 or more, got {quota}"),
        ));
    }
    Ok(quota)
}

/// Body of `PATCH /api/v1/keys/{id}`: every field optional, absent ones unchanged.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateKey {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub expires_at: Option<String>,
    #[serde(default)]
    pub expires_in: Option<String>,
    #[serde(default)]
    pub quota: Option<i64>,
    #[serde(default)]
    pub unlimited_quota: Option<bool>,
    #[serde(default)]
    pub models: Option<Vec<String>>,
    #[serde(default)]
    pub ip_allowlist: Option<Vec<String>>,
    #[serde(default)]
    pub enabled: Option<bool>,
    /// A new requests-per-minute limit; `null` = none of the key's own.
    #[serde(default, deserialize_with = "nullable")]
    pub rpm: Option<Option<i64>>,
    /// Likewise for tokens per minute.
    #[serde(default, deserialize_with = "nullable")]
    pub tpm: Option<Option<i64>>,
    /// Likewise for requests in flight at once.
    #[serde(default, deserialize_with = "nullable")]
    pub max_parallel: Option<Option<i64>>,
    /// A new budget period (see create); a different one than the key has starts a
    /// period now, with nothing used.
    #[serde(default)]
    pub quota_period: Option<String>,
    /// A new rotation date (RFC 3339); `null` clears it.
    #[serde(default, deserialize_with = "nullable_text")]
    #[schema(value_type = Option<String>)]
    pub rotate_by: Option<Option<String>>,
    /// New limits per model, replacing all the key has (`{}` takes them away); a cap
    /// whose model, unit and period stay keeps what it used.
    #[serde(default)]
    pub model_caps: Option<BTreeMap<String, CapRequest>>,
}

impl UpdateKey {
    /// Checks every given field as create does. Whether a new group exists is for the
    /// caller to ask the store.
    pub fn validate(self, now: i64) -> Result<KeyEdit, ApiError> {
        Ok(KeyEdit {
            name: self.name.map(|n| check_name(n, NAME_MAX)).transpose()?,
            group: self
                .group
                .map(|g| check_ref("group", Some(g)))
                .transpose()?,
            expires_at: expiry_of(self.expires_at, self.expires_in, now)?,
            quota: self.quota.map(check_quota).transpose()?,
            unlimited_quota: self.unlimited_quota,
            models: self.models.map(check_models).transpose()?,
            ip_allowlist: self.ip_allowlist.map(check_allowlist).transpose()?,
            enabled: self.enabled,
            rpm: self.rpm.map(|v| limit("rpm", v)).transpose()?,
            tpm: self.tpm.map(|v| limit("tpm", v)).transpose()?,
            max_parallel: self
                .max_parallel
                .map(|v| limit("max_parallel", v))
                .transpose()?,
            quota_period: check_period(self.quota_period)?,
            rotate_by: self
                .rotate_by
                .map(|at| at.as_deref().map(rotate_by).transpose())
                .transpose()?,
            model_caps: self.model_caps.map(caps::check).transpose()?,
        })
    }
}

fn check_name(name: String, max: usize) -> Result<String, ApiError> {
    let len = name.chars().count();
    if name.trim().is_empty() {
        return Err(ApiError::invalid("name", "name must not be empty"));
    }
    if len > max {
        let why = if max < NAME_MAX {
            " when quantity > 1 (each name gets a 7-character suffix)"
        } else {
            ""
        };
        return Err(ApiError::invalid(
            "name",
            format!("name must be at most {max} characters{why}, got {len}"),
        ));
    }
    // The filter sends the name upstream in `x-keygate-key-name`; a control character
    // there would break or forge a header.
    if name.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "name",
            "name must not contain control characters",
        ));
    }
    Ok(name)
}

/// An account or group name, `"default"` when not given.
fn check_ref(param: &str, value: Option<String>) -> Result<String, ApiError> {
    match value {
        None => Ok("default".to_owned()),
        Some(v) if v.is_empty() => Err(ApiError::invalid(
            param,
            format!("{param} must not be empty"),
        )),
        Some(v) => Ok(v),
    }
}

/// Addresses and CIDRs, normalised to CIDR form with host bits cleared, duplicates dropped.
fn check_allowlist(entries: Vec<String>) -> Result<Vec<String>, ApiError> {
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let net = parse_net(entry).ok_or_else(|| {
            ApiError::invalid(
                "ip_allowlist",
                format!("ip_allowlist[{i}] is not an IPv4/IPv6 address or CIDR: {entry:?}"),
            )
        })?;
        let normalised = net.to_string();
        if seen.insert(normalised.clone()) {
            out.push(normalised);
        }
    }
    Ok(out)
}

/// `192.0.2.7` → `192.0.2.7/32`, `10.1.2.3/8` → `10.0.0.0/8`, `::ffff:192.0.2.7` →
/// `192.0.2.7/32` (how a dual-stack listener reports an IPv4 client).
pub fn parse_net(entry: &str) -> Option<IpNet> {
    if entry.contains('/') {
        entry.parse::<IpNet>().ok().map(|net| net.trunc())
    } else {
        entry
            .parse::<IpAddr>()
            .ok()
            .map(|addr| IpNet::from(addr.to_canonical()))
    }
}

/// Body of `POST /api/v1/keys/{id}/rotate` (optional).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateKey {
    /// How long the old secret keeps working (`"1h"`, `"7d"`); absent = it stops at once.
    #[serde(default)]
    pub grace_period: Option<String>,
    /// The next rotation date (RFC 3339); absent = none (the one met is cleared).
    #[serde(default)]
    pub rotate_by: Option<String>,
}

impl RotateKey {
    /// The next rotation date asked for, in unix seconds.
    pub fn next_rotate_by(&self) -> Result<Option<i64>, ApiError> {
        self.rotate_by.as_deref().map(rotate_by).transpose()
    }

    /// The unix second the old secret stops at, if it gets a grace period.
    pub fn grace_until(&self, now: i64) -> Result<Option<i64>, ApiError> {
        let Some(period) = &self.grace_period else {
            return Ok(None);
        };
        let bad = |why: String| ApiError::invalid("grace_period", why);
        match expiry::parse_expires_in(period) {
            Ok(expiry::ExpiresIn::Never) => Err(bad(
                "grace_period must be a duration such as \"1h\" or \"7d\"".into(),
            )),
            Ok(within) => within.expires_at(now).map_err(|e| bad(e.to_string())),
            Err(e) => Err(bad(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn request(name: &str) -> CreateKey {
        CreateKey {
            name: name.into(),
            ..CreateKey::default()
        }
    }

    fn param_of<T: std::fmt::Debug>(result: Result<T, ApiError>) -> String {
        match result {
            Err(ApiError::InvalidRequest { param: Some(p), .. }) => p,
            other => panic!("expected a 400 with a param, got {other:?}"),
        }
    }

    #[test]
    fn defaults_follow_the_contract() {
        let spec = request("ci").validate(NOW).unwrap();
        assert_eq!(
            spec,
            KeySpec {
                name: "ci".into(),
                account: "default".into(),
                group: "default".into(),
                expires_at: None,
                quantity: 1,
                unlimited_quota: true,
                quota: 0,
                models: vec![],
                ip_allowlist: vec![],
                rpm: None,
                tpm: None,
                max_parallel: None,
                quota_period: crate::budget::Period::Total,
                model_caps: vec![],
                rotate_by: None,
            }
        );
    }

    #[test]
    fn a_rotation_date_is_set_cleared_or_left() {
        let mut r = request("k");
        r.rotate_by = Some("2030-01-01T00:00:00Z".into());
        assert_eq!(r.validate(NOW).unwrap().rotate_by, Some(1_893_456_000));
        let mut r = request("k");
        r.rotate_by = Some("soon".into());
        assert_eq!(param_of(r.validate(NOW)), "rotate_by");
        let edit = |body: &str| {
            crate::extract::parse::<UpdateKey>(body.as_bytes()).and_then(|u| u.validate(NOW))
        };
        assert_eq!(
            edit(r#"{"rotate_by": null}"#).unwrap().rotate_by,
            Some(None)
        );
        assert_eq!(edit("{}").unwrap().rotate_by, None);
        assert_eq!(
            edit(r#"{"rotate_by": "2030-01-01T00:00:00Z"}"#)
                .unwrap()
                .rotate_by,
            Some(Some(1_893_456_000))
        );
        assert_eq!(param_of(edit(r#"{"rotate_by": "x"}"#)), "rotate_by");
    }

    #[test]
    fn each_bad_field_is_named() {
        let s = |f: fn(&mut CreateKey)| {
            let mut r = request("ok");
            f(&mut r);
            param_of(r.validate(NOW))
        };
        assert_eq!(s(|r| r.name = String::new()), "name");
        assert_eq!(s(|r| r.name = "  ".into()), "name");
        assert_eq!(s(|r| r.name = "x".repeat(65)), "name");
        assert_eq!(s(|r| r.name = "a\r\nb".into()), "name");
        assert_eq!(s(|r| r.quantity = Some(0)), "quantity");
        assert_eq!(s(|r| r.quantity = Some(101)), "quantity");
        assert_eq!(s(|r| r.quota = Some(-1)), "quota");
        assert_eq!(s(|r| r.account = Some(String::new())), "account");
        assert_eq!(s(|r| r.group = Some(String::new())), "group");
        assert_eq!(s(|r| r.expires_at = Some("tomorrow".into())), "expires_at");
        assert_eq!(s(|r| r.expires_in = Some("5 days".into())), "expires_in");
        assert_eq!(
            s(|r| {
                r.expires_in = Some("1d".into());
                r.expires_at = Some("2030-01-01T00:00:00Z".into());
            }),
            "expires_in"
        );
        assert_eq!(s(|r| r.models = Some(vec!["".into()])), "models");
        assert_eq!(
            s(|r| r.ip_allowlist = Some(vec!["10.0.0.0/33".into()])),
            "ip_allowlist"
        );
        assert_eq!(s(|r| r.rpm = Some(0)), "rpm");
        assert_eq!(s(|r| r.tpm = Some(-1)), "tpm");
        assert_eq!(s(|r| r.max_parallel = Some(0)), "max_parallel");
    }

    #[test]
    fn rate_limits_are_kept_on_create() {
        let mut r = request("k");
        (r.rpm, r.tpm, r.max_parallel) = (Some(1), Some(100_000), None);
        let spec = r.validate(NOW).unwrap();
        assert_eq!(
            (spec.rpm, spec.tpm, spec.max_parallel),
            (Some(1), Some(100_000), None)
        );
    }

    #[test]
    fn an_edit_sets_clears_or_leaves_each_rate_limit() {
        let edit = |body: &str| {
            crate::extract::parse::<UpdateKey>(body.as_bytes()).and_then(|u| u.validate(NOW))
        };
        let e = edit(r#"{"rpm": 60, "tpm": null}"#).unwrap();
        assert_eq!(
            (e.rpm, e.tpm, e.max_parallel),
            (Some(Some(60)), Some(None), None)
        );
        let e = edit(r#"{"max_parallel": 4}"#).unwrap();
        assert_eq!((e.rpm, e.tpm, e.max_parallel), (None, None, Some(Some(4))));
        for field in ["rpm", "tpm", "max_parallel"] {
            for bad in ["0", "-1", "\"x\"", "1.5"] {
                let body = format!("{{\"{field}\": {bad}}}");
                assert_eq!(param_of(edit(&body)), field, "{body}");
            }
        }
    }

    #[test]
    fn a_batch_name_leaves_room_for_the_suffix() {
        let mut r = request(&"x".repeat(58));
        r.quantity = Some(2);
        assert_eq!(param_of(r.clone().validate(NOW)), "name");
        r.name = "x".repeat(57);
        assert!(r.validate(NOW).is_ok());
        assert!(
            request(&"é".repeat(64)).validate(NOW).is_ok(),
            "counts characters"
        );
    }

    #[test]
    fn expiry_is_absolute_or_relative_to_now() {
        let mut r = request("k");
        r.expires_in = Some("1h".into());
        assert_eq!(r.validate(NOW).unwrap().expires_at, Some(NOW + 3_600));
        let mut r = request("k");
        r.expires_in = Some("never".into());
        assert_eq!(r.validate(NOW).unwrap().expires_at, None);
        let mut r = request("k");
        r.expires_at = Some("2000-01-01T00:00:00Z".into());
        assert_eq!(r.validate(NOW).unwrap().expires_at, Some(946_684_800));
    }

    #[test]
    fn allowlist_entries_are_normalised() {
        let cases = [
            ("192.0.2.7", "192.0.2.7/32"),
            ("10.1.2.3/8", "10.0.0.0/8"),
            ("2001:db8::1", "2001:db8::1/128"),
            ("2001:DB8:0:0::/32", "2001:db8::/32"),
            ("::ffff:192.0.2.7", "192.0.2.7/32"),
            ("0.0.0.0/0", "0.0.0.0/0"),
        ];
        for (entry, want) in cases {
            assert_eq!(
                parse_net(entry).map(|n| n.to_string()).as_deref(),
                Some(want),
                "{entry}"
            );
        }
        for bad in [
            "",
            "10.0.0",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/",
            "host.example",
            " 10.0.0.1",
        ] {
            assert_eq!(parse_net(bad), None, "{bad:?}");
        }
        let mut r = request("k");
        r.ip_allowlist = Some(vec!["10.0.0.1".into(), "10.0.0.1/32".into()]);
        assert_eq!(r.validate(NOW).unwrap().ip_allowlist, ["10.0.0.1/32"]);
    }
}
