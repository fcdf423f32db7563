//! What a request costs: reserved in the quota ledgers when it is admitted, settled when it
//! ends, and recorded in the outbox for the key-service.

use super::{Event, Host, Job, Phase, Reader, Request, HOST_FAILED};
use crate::decide::decision::Denial;
use crate::decide::model;
use crate::keys::secret::KeyHash;
use crate::limits::credit;
use crate::limits::ledger::{self, Estimate, Lease, Reserve};
use crate::sync::snapshot::CapUnit;
use crate::sync::view::{self, View};
use crate::usage::pricing::{self, Price, Tokens};
use crate::usage::report::{Charge, Record, UsageWire, MODEL_MAX};
use crate::usage::scan::{self, Api, Scanned, Usage};

/// An admitted request's reservation in the ledgers of its key and account (`ledger`),
/// each only if limited, and of the key's cap on its model.
pub(super) struct Reservation {
    amount: u64,
    key_ledger: Option<String>,
    account_ledger: Option<String>,
    /// The key's cap on the request's model: its ledger, what it counts, and what was
    /// reserved there.
    /// (Boxed: few keys have caps, and a reservation rides in every metered request.)
    cap: Option<Box<(String, CapUnit, u64)>>,
    /// The group's price multiplier, to price what the request turns out to use.
    ratio: f64,
    /// The price its estimate was made with: what it is settled at if this VM's tables
    /// (read on its tick) have no price for its model yet.
    price: Option<Price>,
    /// The most the request was estimated to use: what it is billed if its answer says
    /// nothing of its usage.
    estimate: Tokens,
}

/// What `Request::reserve` did, when it did not refuse.
pub(super) enum Reserved {
    Yes,
    /// This Envoy's lease in `ledger` does not cover the request: it waits for the answer
    /// to ask number `ask`.
    Wait {
        ledger: String,
        ask: u64,
    },
}

/// A request that never reached a provider gives its reservation back whole.
pub(super) fn release(host: &impl Host, reservation: Reservation) {
    for name in [&reservation.key_ledger, &reservation.account_ledger]
        .into_iter()
        .flatten()
    {
        let _ = ledger::settle(host, name, reservation.amount, 0);
    }
    if let Some(cap) = &reservation.cap {
        let (name, _, held) = &**cap;
        let _ = ledger::settle(host, name, *held, 0);
    }
}

/// The model as the key-service will bill it (as the record names it): printable, at most
/// `MODEL_MAX` bytes, `unknown` if nothing is left. Prices and caps are looked up with
/// it, so the filter counts a request against the same cap the key-service bills (a
/// client's `"gpt-4o\u0001"` is `gpt-4o` to both).
fn billed_model(model: &str) -> std::borrow::Cow<'_, str> {
    let clean = model.len() <= MODEL_MAX && !model.chars().any(char::is_control);
    if clean && !model.trim().is_empty() {
        return std::borrow::Cow::Borrowed(model);
    }
    let printable = model::printable(model, MODEL_MAX);
    match printable.trim().is_empty() {
        true => "unknown".into(),
        false => printable.into(),
    }
}

/// What a request counts against a cap: its credits, or its input and output tokens.
fn cap_amount(unit: CapUnit, credits: u64, tokens: Tokens) -> u64 {
    match unit {
        CapUnit::Credits => credits,
        CapUnit::Tokens => tokens.input.saturating_add(tokens.output),
    }
}

impl Request {
    /// Reserves in the key's and the account's ledgers (those that are limited) what the
    /// request may cost, or refuses it with `insufficient_quota`, and in the ledger of the
    /// key's cap on its model (if any) what it counts there, or refuses it with
    /// `model_budget_exceeded`. With credit leases (each of these ledgers has its own), a
    /// request the lease does not cover waits for the leader's next ask (`Wait`), unless
    /// it had the answer to that ask for this ledger already (`answered`): it is refused
    /// then (503 if the key-service could not be asked).
    pub(super) fn reserve(
        &mut self,
        host: &impl Host,
        view: &View,
        hash: &KeyHash,
        model: Option<&str>,
        estimate: Estimate,
        answered: Option<&str>,
    ) -> Result<Reserved, Denial> {
        let model = model.map(billed_model);
        let model = model.as_deref();
        // The snapshot version first, then the key: a key entry is written before the
        // version moves, so it shows at least what that version does, and a cost landing
        // after that version is counted by the ledger (perhaps twice for a moment: the
        // safe way). The account's balance comes with this VM's view and its version.
        let (meta, _) = view::read_meta(host).map_err(|_| HOST_FAILED)?;
        let key = super::admit::lookup(host, hash, meta.epoch)?.ok_or(Denial::InvalidApiKey)?;
        let config = &self.plugin.config;
        let ratio = view.tables.ratio(key.group());
        let mut price = model.and_then(|m| view.tables.price(m));
        if price.is_none() && meta.version > view.meta.version {
            // This VM reads the tables on its tick: a price set a moment ago may be in
            // shared data already.
            if let Ok(Some(fresh)) = View::refresh(host, None) {
                price = model.and_then(|m| fresh.tables.price(m));
            }
        }
        if price.is_none() && !config.allow_unpriced_models {
            // A model nobody priced would cost a limited key nothing.
            return Err(Denial::ModelNotPriced);
        }
        let amount = estimate.credits(price, ratio, config.default_output_tokens);
        let now_ms = host.now_ms().map_err(|_| HOST_FAILED)?;
        let lease = |name: &str| match (config.credit_lease_ttl_ms, answered) {
            (0, _) => Lease::Off,
            (_, Some(done)) if done == name => Lease::Answered(now_ms),
            _ => Lease::Ask(now_ms),
        };
        let now = now_ms.div_euclid(1_000).try_into().unwrap_or(i64::MAX);
        let key_limit = key.remaining_at(now);
        let account_limit = view.tables.balance(key.account(), now);
        let key_ledger = key_limit.map(|_| ledger::key_entry(key.id()));
        let account_ledger = account_limit.map(|_| ledger::account_entry(key.account()));
        let estimated = estimate.tokens(config.default_output_tokens);
        // The key's cap on this model, in its unit (credits or tokens).
        let cap = model.and_then(|m| key.cap_for(m)).map(|c| {
            let held = cap_amount(c.unit, amount, estimated);
            (
                ledger::cap_entry(key.id(), c.unit, &c.model),
                c.unit,
                c.left_at(now),
                held,
            )
        });
        // Each limit in turn, with what it holds back and how it refuses: the key's quota,
        // the account's balance, the key's cap on the model. Each is spent from a lease
        // of its own when leases are on, so a fleet cannot overspend any of them.
        let limited = [
            key_ledger.as_deref().zip(key_limit).map(|(name, limit)| {
                (name, limit, meta.version, amount, Denial::InsufficientQuota)
            }),
            account_ledger
                .as_deref()
                .zip(account_limit)
                .map(|(name, limit)| {
                    (
                        name,
                        limit,
                        view.meta.version,
                        amount,
                        Denial::InsufficientQuota,
                    )
                }),
            cap.as_ref().map(|(name, _, limit, held)| {
                (
                    name.as_str(),
                    *limit,
                    meta.version,
                    *held,
                    Denial::ModelBudgetExceeded,
                )
            }),
        ];
        // What was reserved so far (no allocation: this runs on every metered request).
        let mut taken: [Option<(&str, u64)>; 3] = [None; 3];
        // The first limit whose lease does not cover the request: it waits for the answer
        // to that ask. The limits after it are looked at still, so that each one whose
        // lease falls short too goes in the same ask (one round trip, not one each).
        let mut waiting: Option<(&str, u64)> = None;
        let mut wake_leader = false;
        let mut refusal = None;
        for (i, (name, limit, version, held, over)) in limited.into_iter().flatten().enumerate() {
            match ledger::reserve(host, name, limit, held, version, lease(name)) {
                Ok(Reserve::Admitted) => taken[i] = Some((name, held)),
                Ok(Reserve::NeedLease { ask, list, wake }) => {
                    let listed = if list {
                        credit::list(host, name)
                    } else {
                        Ok(true)
                    };
                    match listed {
                        Ok(true) => {
                            wake_leader |= wake;
                            waiting = waiting.or(Some((name, ask)));
                        }
                        // More limited keys in use than an Envoy lists.
                        Ok(false) => refusal = Some(Denial::Overloaded),
                        Err(_) => refusal = Some(HOST_FAILED),
                    }
                }
                Ok(Reserve::OverLimit | Reserve::LeaseShort) => refusal = Some(over),
                Ok(Reserve::LeaseFailed) => refusal = Some(Denial::KeyServiceUnavailable),
                Err(_) => refusal = Some(HOST_FAILED),
            }
            if refusal.is_some() {
                break;
            }
        }
        if wake_leader && refusal.is_none() {
            match credit::wake(host) {
                Ok(()) => host.wake_leader(),
                Err(_) => refusal = Some(HOST_FAILED),
            }
        }
        // What was reserved goes back if the request is refused, or waits (it reserves
        // again once the answer comes).
        let give_back = || {
            for (taken, held) in taken.into_iter().flatten() {
                let _ = ledger::settle(host, taken, held, 0);
            }
        };
        if let Some(denial) = refusal {
            give_back();
            return Err(denial);
        }
        if let Some((ledger, ask)) = waiting {
            give_back();
            return Ok(Reserved::Wait {
                ledger: ledger.to_owned(),
                ask,
            });
        }
        let cap = cap.map(|(name, unit, _, held)| Box::new((name, unit, held)));
        let reservation = Reservation {
            price,
            amount,
            key_ledger,
            account_ledger,
            cap,
            ratio,
            estimate: estimated,
        };
        match &mut self.job {
            Job::Meter(meter) => meter.reservation = Some(reservation),
            // Only metered requests reserve; one that is not cannot keep it.
            _ => release(host, reservation),
        }
        Ok(Reserved::Yes)
    }

    /// The price of a model as this VM's snapshot has it.
    fn price_of(&self, model: Option<&str>) -> Option<Price> {
        let view = self.plugin.view.borrow();
        view.as_ref()?.tables.price(model?)
    }

    /// The request ended: its reservation goes back, and what it used (priced as the
    /// snapshot prices its model) counts until the key-service's snapshot shows it.
    /// `status` is the record's (499: no answer), which decides the charge per call.
    fn settle(
        &self,
        host: &impl Host,
        reservation: Option<Reservation>,
        model: Option<&str>,
        usage: Option<&Usage>,
        status: u16,
    ) -> Option<Charge> {
        let reservation = reservation?;
        let price = self
            .price_of(model)
            .or(reservation.price)
            .map(|p| p.for_status(status));
        let tokens = usage.map_or_else(Tokens::default, |u| Tokens {
            input: u.input,
            cached_input: u.cached_input,
            output: u.output,
            cache_write: u.cache_write,
        });
        let cost = u64::try_from(pricing::cost(tokens, price, reservation.ratio)).unwrap_or(0);
        for name in [&reservation.key_ledger, &reservation.account_ledger]
            .into_iter()
            .flatten()
        {
            // A failure here leaves the estimate counted until Envoy restarts: the key
            // is refused early, never overdrawn.
            let _ = ledger::settle(host, name, reservation.amount, cost);
        }
        let cap = reservation.cap.map(|cap| {
            let (name, unit, held) = *cap;
            let used = cap_amount(unit, cost, tokens);
            let _ = ledger::settle(host, &name, held, used);
            (name, used)
        });
        if reservation.key_ledger.is_none() && reservation.account_ledger.is_none() && cap.is_none()
        {
            return None;
        }
        Some(Charge {
            cost,
            key_ledger: reservation.key_ledger,
            account_ledger: reservation.account_ledger,
            cap,
        })
    }

    /// The request ended: what it used goes to the outbox for the key-service (and its
    /// reservation is settled). Returns the tokens it used, 0 if unknown.
    pub(super) fn record_usage(&mut self, host: &impl Host) -> u64 {
        let Job::Meter(meter) = std::mem::replace(&mut self.job, Job::Pass) else {
            return 0;
        };
        let scanned = match std::mem::replace(&mut self.phase, Phase::Start) {
            Phase::Response(Reader::Usage { scanner, .. }) => scanner.finish(),
            _ => Scanned::default(),
        };
        let model = meter
            .model
            .or_else(|| scanned.model.clone())
            .map(|m| billed_model(&m).into_owned());
        let max_body_bytes = self.plugin.config.max_body_bytes as u64;
        // The prompt reached the provider, which bills it: about a token per 4 bytes of
        // what arrived (never more than the limit of a body the filter reads).
        let bytes = meter
            .request_bytes
            .unwrap_or(self.body_received)
            .min(max_body_bytes);
        let prompt = Usage {
            input: bytes.div_ceil(4),
            ..Usage::default()
        };
        // No response at all (the client went away first): nginx's 499.
        let status = if meter.status == 0 { 499 } else { meter.status };
        let billed = match meter.api {
            // A route priced per call: no tokens to read.
            Api::PerCall => Some((Usage::default(), false)),
            _ => scan::bill(&scanned, meter.status, prompt),
        };
        let reservation = meter.reservation;
        let billed = billed.or_else(|| {
            // A success that says nothing of its usage (an image model that reports none,
            // a compressed answer): a key or account with a limit is billed the estimate
            // its request was admitted on, never nothing.
            host.count(Event::UsageMissing);
            let held = reservation.as_ref()?;
            let estimate = held.estimate;
            if self
                .price_of(model.as_deref())
                .or(held.price)
                .is_some_and(|p| p.per_request > 0.0)
            {
                // Priced per call (dall-e): that price is the bill.
                return Some((Usage::default(), false));
            }
            Some((
                Usage {
                    input: estimate.input,
                    output: estimate.output,
                    ..Usage::default()
                },
                true,
            ))
        });
        let Some((usage, estimated)) = billed else {
            self.settle(host, reservation, model.as_deref(), None, status);
            return 0;
        };
        if estimated {
            host.count(Event::UsageEstimated);
        }
        let charge = self.settle(host, reservation, model.as_deref(), Some(&usage), status);
        let ts = host
            .now_ms()
            .map_or(0, |ms| i64::try_from(ms / 1000).unwrap_or(0));
        let record = Record {
            usage: UsageWire {
                request_id: meter.request_id,
                key_id: meter.key_id,
                // What the key-service stores (`billed_model`; none: `unknown`).
                model: Some(model.unwrap_or_else(|| "unknown".into())),
                input_tokens: usage.input,
                cached_input_tokens: usage.cached_input,
                output_tokens: usage.output,
                cache_write_tokens: usage.cache_write,
                status: Some(u64::from(status)),
                ts: Some(ts),
                estimated,
            },
            charge: charge.filter(|c| c.ledgers().any(|(_, amount)| amount > 0)),
        };
        self.plugin.outbox.borrow_mut().push(record);
        host.count(Event::UsageRecorded(&usage));
        usage.input.saturating_add(usage.output)
    }
}
