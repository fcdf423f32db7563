//! `POST /filter/v1/leases`: a filter (a "holder") asks for leases of credit on the
//! limited keys and accounts it serves, and spends from them without asking per request
//! (see [`Store::grant_leases`](crate::store::Store::grant_leases) for the rule that keeps
//! every holder's leases together within what a key or account has left).

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::expiry;
use crate::extract::ApiJson;
use crate::store::{LeaseAsk, LeaseGrant};
use crate::AppState;

/// Subjects per ask at most.
pub const LEASES_MAX: usize = 1000;
/// Bounds of a holder's name, in printable ASCII characters.
pub const HOLDER_MAX: usize = 64;
/// Bounds of a subject's key id or account name, in bytes (as a record's `key_id`).
pub const SUBJECT_MAX: usize = 128;
/// Bounds of the model of a cap's subject, in bytes: 256 characters of up to 4 bytes, as
/// caps were named before names were bounded in bytes (256 now), and are still stored.
pub const MODEL_SUBJECT_MAX: usize = 1024;
/// Bounds of `ttl_ms`: a lease lasts from a second to ten minutes.
pub const TTL_MS_MIN: u64 = 1_000;
pub const TTL_MS_MAX: u64 = 600_000;

/// Body of `POST /filter/v1/leases`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaseRequest {
    /// The filter's own name, random, the same in its usage reports (1-64 printable ASCII
    /// characters).
    #[schema(min_length = 1, max_length = 64)]
    pub holder: String,
    /// How long the leases last: the holder spends from them until `ttl_ms` from now;
    /// what it holds still counts for as long again (records on their way).
    #[schema(minimum = 1000, maximum = 600000)]
    pub ttl_ms: u64,
    /// At most 1000, each subject once.
    pub leases: Vec<LeaseItem>,
}

/// One subject asked for.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaseItem {
    /// `k:<key id>` (its quota) or `a:<account name>` (its balance): credit, `spent`
    /// counting everything spent; `m:<key id>:<unit>:<model>` (the key's cap on those models,
    /// its name or pattern as stored): the same, in the cap's unit (credits or tokens);
    /// `r:`, `t:` or `p:` and a key id (its requests per
    /// minute, tokens per minute, requests in flight): a share of the limit, `spent` being
    /// what the holder's window counts now.
    pub subject: String,
    /// Credits the holder has spent on the subject in all, billed or not: a count it keeps
    /// for as long as it runs, which `granted` is in. A new lease (a holder's first, or
    /// one after its last was dropped) takes what was spent before it as billed.
    pub spent: u64,
    /// Credits it must have now (the request in hand): granted whole when that much is free.
    pub need: u64,
    /// Credits it would like to hold beyond `spent`; at most half of what is free is
    /// granted (unless `need` is more). 0 gives back what it has not spent.
    pub want: u64,
}

/// The answer for one subject, in the order asked.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LeaseGranted {
    pub subject: String,
    /// False: the subject has no limit; the holder spends freely and holds no lease.
    pub limited: bool,
    /// What the holder may have spent in all, counting `spent` (never less than it, up to
    /// 2^63 - 1); 0 when not `limited`.
    pub granted: u64,
}

/// The answer to a lease ask.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LeaseAnswer {
    pub leases: Vec<LeaseGranted>,
    /// As asked.
    pub ttl_ms: u64,
}

/// A holder's name: 1-64 printable ASCII characters. The message never repeats it.
pub fn check_holder(holder: &str) -> Result<(), ApiError> {
    if holder.is_empty()
        || holder.len() > HOLDER_MAX
        || !holder.bytes().all(|b| b == b' ' || b.is_ascii_graphic())
    {
        return Err(ApiError::invalid(
            "holder",
            format!("holder must be 1-{HOLDER_MAX} printable ASCII characters"),
        ));
    }
    Ok(())
}

/// A subject: `k:`, `a:`, `r:`, `t:` or `p:` and then 1-128 bytes without control
/// characters, or `m:`, a key id, `:`, the cap's unit (`credits` or `tokens`), `:` and a
/// model name or pattern (a key's cap on those models; the model up to
/// `MODEL_SUBJECT_MAX` bytes).
fn check_subject(i: usize, subject: &str) -> Result<(), ApiError> {
    let printable = |name: &str, max: usize| {
        !name.is_empty() && name.len() <= max && !name.chars().any(char::is_control)
    };
    let fine = match subject.strip_prefix("m:") {
        Some(_) => crate::store::cap_subject(subject).is_some_and(|(key_id, _, model)| {
            printable(key_id, SUBJECT_MAX) && printable(model, MODEL_SUBJECT_MAX)
        }),
        None => ["k:", "a:", "r:", "t:", "p:"]
            .iter()
            .find_map(|prefix| subject.strip_prefix(prefix))
            .is_some_and(|name| printable(name, SUBJECT_MAX)),
    };
    if fine {
        return Ok(());
    }
    Err(ApiError::invalid(
        "leases",
        format!(
            "leases[{i}].subject must be k:, r:, t: or p: and a key id, a: and an account \
             name, or m:, a key id, :credits: or :tokens: and a model, 1-{SUBJECT_MAX} \
             printable characters each (a model up to {MODEL_SUBJECT_MAX} bytes)"
        ),
    ))
}

/// `POST /filter/v1/leases`: grants the holder a lease on each subject, all in one write
/// transaction, and answers them in the order asked.
#[utoipa::path(
    post,
    operation_id = "grant_leases",
    path = "/filter/v1/leases",
    tag = "filter",
    security(("filter" = [])),
    request_body = LeaseRequest,
    responses(
        (status = 200, body = LeaseAnswer),
        (status = 400, description = "The contract's error", body = crate::error::Body),
        (status = 401, description = "The contract's error", body = crate::error::Body),
    ),
)]
pub async fn grant(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<LeaseRequest>,
) -> Result<Json<LeaseAnswer>, ApiError> {
    check_holder(&body.holder)?;
    if !(TTL_MS_MIN..=TTL_MS_MAX).contains(&body.ttl_ms) {
        return Err(ApiError::invalid(
            "ttl_ms",
            format!("ttl_ms must be from {TTL_MS_MIN} to {TTL_MS_MAX}"),
        ));
    }
    if body.leases.len() > LEASES_MAX {
        return Err(ApiError::invalid(
            "leases",
            format!("at most {LEASES_MAX} leases per ask"),
        ));
    }
    let mut seen = std::collections::HashSet::with_capacity(body.leases.len());
    for (i, item) in body.leases.iter().enumerate() {
        if !seen.insert(item.subject.as_str()) {
            return Err(ApiError::invalid(
                "leases",
                format!("leases[{i}].subject was asked before in this ask"),
            ));
        }
    }
    // A subject this service cannot take is answered on its own, with nothing beyond
    // what its holder spent: refusing the whole ask would refuse every other lease in it,
    // on every ask while that subject stays due.
    let (mut asks, mut refused) = (Vec::with_capacity(body.leases.len()), Vec::new());
    for (i, item) in body.leases.into_iter().enumerate() {
        match check_subject(i, &item.subject) {
            Ok(()) => asks.push(LeaseAsk {
                subject: item.subject,
                spent: item.spent,
                need: item.need,
                want: item.want,
            }),
            Err(e) => {
                tracing::warn!(index = i, error = %e, "lease subject refused");
                refused.push((i, item.subject, item.spent));
            }
        }
    }
    let ttl_ms = i64::try_from(body.ttl_ms).unwrap_or(i64::MAX);
    let mut grants = state
        .store
        .grant_leases(&body.holder, &asks, ttl_ms, expiry::now_ms())
        .await?;
    for (i, subject, spent) in refused {
        let grant = LeaseGrant {
            subject,
            limited: true,
            granted: spent,
        };
        grants.insert(i.min(grants.len()), grant);
    }
    let limited = grants.iter().filter(|g| g.limited).count() as u64;
    state
        .metrics
        .leases_answered(limited, grants.len() as u64 - limited);
    Ok(Json(LeaseAnswer {
        leases: grants
            .into_iter()
            .map(|g| LeaseGranted {
                subject: g.subject,
                limited: g.limited,
                granted: g.granted,
            })
            .collect(),
        ttl_ms: body.ttl_ms,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The filter keeps each ask within `ASK_BYTES_MAX` (and one item, at most about
    /// 2.5 KiB, when the first alone is larger): it must fit the body limit here.
    #[test]
    fn the_filters_largest_ask_fits_the_body_limit() {
        let largest = keygate_core::limits::credit::ASK_BYTES_MAX + 4 * 1024;
        assert!(largest <= crate::error::BODY_LIMIT, "{largest}");
    }

    #[test]
    fn holders_and_subjects_are_checked_without_repeating_them() {
        for ok in ["3f2a9c", "a b", &"h".repeat(HOLDER_MAX), "~!"] {
            assert!(check_holder(ok).is_ok(), "{ok:?}");
        }
        for bad in ["", "é", "a\nb", "\t", &"h".repeat(HOLDER_MAX + 1)] {
            let err = check_holder(bad).unwrap_err().to_string();
            assert!(err.contains("holder"), "{err}");
        }
        for ok in [
            "k:key_abc",
            "a:team",
            "m:key_abc:credits:gpt-4o-*",
            "m:key_abc:tokens:llama3:8b",
            &format!("m:key_abc:tokens:{}", "é".repeat(MODEL_SUBJECT_MAX / 2)),
            &format!(
                "m:{}:credits:{}",
                "k".repeat(SUBJECT_MAX),
                "x".repeat(MODEL_SUBJECT_MAX)
            ),
            &format!("k:{}", "x".repeat(SUBJECT_MAX)),
        ] {
            assert!(check_subject(0, ok).is_ok(), "{ok:?}");
        }
        for bad in [
            "",
            "k:",
            "a:",
            "key_abc",
            "x:abc",
            "K:abc",
            "k:a\u{0}b",
            "m:key_abc",
            "m:key_abc:gpt-4o",
            "m:key_abc:dollars:gpt-4o",
            "m::credits:gpt-4o",
            "m:key_abc:credits:",
            "m:key_abc:tokens:gpt\n",
            &format!("m:key_abc:credits:{}", "x".repeat(MODEL_SUBJECT_MAX + 1)),
            &format!("a:{}", "x".repeat(SUBJECT_MAX + 1)),
        ] {
            let err = check_subject(3, bad).unwrap_err().to_string();
            assert!(err.contains("leases[3].subject"), "{err}");
            if bad.len() > 2 {
                assert!(!err.contains(&bad[2..]), "{err}");
            }
        }
    }
}
