//! A key's own view (`GET /v1/keygate/key`, `key_info_path`): what an app may learn of the
//! key it holds, answered by the filter from its snapshot with no call-out, so that an
//! app can check its own headroom with its own key. Never the secret or its hash.

use serde_json::{json, Value};

use crate::keys::entry::Entry;
use crate::limits::ledger;
use crate::limits::rate::Limits;
use crate::sync::snapshot::Tables;

/// The view as JSON. `status` is `active` or `exhausted` (a key refused for any other
/// reason gets that refusal instead); `now` in Unix seconds. `pending` tells what this
/// Envoy holds against a ledger (`limits::ledger`) beyond the snapshot: requests in
/// flight and spending not in a snapshot yet, taken off what the snapshot says is left.
pub fn render(
    key: &Entry,
    tables: &Tables,
    status: &str,
    now: i64,
    pending: impl Fn(&str) -> u64,
) -> String {
    let less = |left: i64, ledger: String| {
        left.saturating_sub(i64::try_from(pending(&ledger)).unwrap_or(i64::MAX))
    };
    let (group_rpm, group_tpm) = tables.group_rates(key.group());
    let limits = Limits::effective(key.limits, group_rpm, group_tpm, 1);
    // The current period's end; once it has passed (and no snapshot said which comes
    // next), when the next one ends is not known here.
    let period = key.period.map(
        |p| json!({"quota": p.to, "resets_at": (now < p.at).then(|| rfc3339(p.at)).flatten()}),
    );
    let caps: Vec<Value> = key
        .caps()
        .iter()
        .map(|cap| {
            json!({
                "model": cap.model,
                "unit": cap.unit.as_str(),
                "limit": cap.limit,
                "remaining": less(
                    cap.left_at(now),
                    ledger::cap_entry(key.id(), cap.unit, &cap.model),
                ),
                "resets_at": cap.period_end.filter(|end| now < *end).and_then(rfc3339),
            })
        })
        .collect();
    json!({
        "object": "keygate.key",
        "id": key.id(),
        "name": key.name(),
        "group": key.group(),
        "account": key.account(),
        "status": status,
        "expires_at": key.expires_at.and_then(rfc3339),
        "models": key.model_names(),
        "rpm": limits.rpm,
        "tpm": limits.tpm,
        "max_parallel": limits.max_parallel,
        "remaining_quota": key
            .remaining_at(now)
            .map(|left| less(left, ledger::key_entry(key.id()))),
        "period": period,
        "account_remaining": tables
            .balance(key.account(), now)
            .map(|left| less(left, ledger::account_entry(key.account()))),
        "model_caps": caps,
    })
    .to_string()
}

/// Unix seconds as RFC 3339 in UTC (`2026-12-04T15:02:29Z`); `None` outside years 0 to
/// 9999. (Days to a civil date by Howard Hinnant's method, in integers.)
pub fn rfc3339(unix: i64) -> Option<String> {
    let days = unix.div_euclid(86_400);
    let second = unix.rem_euclid(86_400);
    let z = days.checked_add(719_468)?;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era.checked_add(era.checked_mul(400)?)? + i64::from(month <= 2);
    if !(0..=9_999).contains(&year) {
        return None;
    }
    Some(format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        second / 3_600,
        second % 3_600 / 60,
        second % 60
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::snapshot::{AccountRecord, CapUnit, KeyRecord, ModelCap, TablesWire};
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn times_read_as_rfc_3339() {
        for (unix, text) in [
            (0, "1970-01-01T00:00:00Z"),
            (951_782_400, "2000-02-29T00:00:00Z"),
            (1_796_396_549, "2026-12-04T15:02:29Z"),
            (253_402_300_799, "9999-12-31T23:59:59Z"),
            (-62_167_219_200, "0000-01-01T00:00:00Z"),
        ] {
            assert_eq!(rfc3339(unix).as_deref(), Some(text), "{unix}");
        }
        for out in [253_402_300_800, -62_167_219_201, i64::MAX, i64::MIN] {
            assert_eq!(rfc3339(out), None, "{out}");
        }
    }

    #[test]
    fn the_view_shows_what_is_left_and_never_the_secret() {
        let secret = "sk-".to_string() + &"a".repeat(48);
        let mut record = KeyRecord::plain("key_1", "app", &secret);
        record.account = "team".into();
        record.expires_at = Some(2_000);
        record.models = vec!["gpt-4o".into()];
        record.remaining_quota = Some(500);
        record.period_end = Some(1_500);
        record.period_quota = Some(800);
        record.rpm = Some(60);
        record.model_caps = vec![ModelCap {
            model: "gpt-*".into(),
            unit: CapUnit::Tokens,
            limit: 100,
            used: 30,
            period_end: None,
        }];
        let key = Entry::from_record(&record).unwrap();
        let tables = Tables::new(TablesWire {
            groups: vec![],
            accounts: vec![AccountRecord {
                name: "team".into(),
                balance: Some(1_000),
                period_end: None,
                period_balance: None,
            }],
            prices: vec![],
        });
        let pending = |name: &str| match name {
            "kg:q:k:key_1" => 120,
            "kg:q:a:team" => 20,
            "kg:q:m:key_1:tokens:gpt-*" => 5,
            _ => 0,
        };
        let text = render(&key, &tables, "active", 1_000, pending);
        let view: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(view["remaining_quota"], 380);
        assert_eq!(view["account_remaining"], 980);
        assert_eq!(
            view["period"],
            json!({"quota": 800, "resets_at": "1970-01-01T00:25:00Z"})
        );
        assert_eq!(view["expires_at"], "1970-01-01T00:33:20Z");
        assert_eq!(
            (view["rpm"].clone(), view["tpm"].clone()),
            (json!(60), Value::Null)
        );
        assert_eq!(view["models"], json!(["gpt-4o"]));
        assert_eq!(view["model_caps"][0]["remaining"], 65);
        assert!(!text.contains(&secret));
        assert!(!text.contains(&record.hash));
        // Past the period's end: the whole quota, and no known reset.
        let later: Value =
            serde_json::from_str(&render(&key, &tables, "active", 1_600, |_| 0)).unwrap();
        assert_eq!(later["remaining_quota"], 800);
        assert_eq!(later["period"]["resets_at"], Value::Null);
        // An unlimited key says so with nulls; pending amounts at the extremes saturate.
        let open = Entry::from_record(&KeyRecord::plain("key_2", "open", &secret)).unwrap();
        let view = render(&open, &Tables::default(), "active", 0, |_| u64::MAX);
        let view: Value = serde_json::from_str(&view).unwrap();
        assert_eq!(
            (
                view["remaining_quota"].clone(),
                view["account_remaining"].clone()
            ),
            (Value::Null, Value::Null)
        );
    }
}
