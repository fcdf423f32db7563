//! What a request costs: reserved in the quota ledgers when it is admitted, settled when it
//! ends, and recorded in the outbox for the key-service.

use super::{Event, Host, Job, Phase, Reader, Request, HOST_FAILED};
use crate::decide::decision::Denial;
use crate::decide::model;
use crate::keys::secret::KeyHash;
use crate::limits::ledger::{self, Estimate};
use crate::sync::view::{self, View};
use crate::usage::pricing::{self, Price, Tokens};
use crate::usage::report::{Charge, Record, UsageWire, MODEL_MAX};
use crate::usage::scan::{self, Api, Scanned, Usage};

/// An admitted request's reservation in the ledgers of its key and account (`ledger`),
/// each only if limited.
pub(super) struct Reservation {
    amount: u64,
    key_ledger: Option<String>,
    account_ledger: Option<String>,
    /// The group's price multiplier, to price what the request turns out to use.
    ratio: f64,
    /// The most the request was estimated to use: what it is billed if its answer says
    /// nothing of its usage.
    estimate: Tokens,
}

/// A request that never reached a provider gives its reservation back whole.
pub(super) fn release(host: &impl Host, reservation: Reservation) {
    for name in [&reservation.key_ledger, &reservation.account_ledger]
        .into_iter()
        .flatten()
    {
        let _ = ledger::settle(host, name, reservation.amount, 0);
    }
}

impl Request {
    /// Reserves in the key's and the account's ledgers (those that are limited) what the
    /// request may cost, or refuses it with `insufficient_quota`.
    pub(super) fn reserve(
        &mut self,
        host: &impl Host,
        view: &View,
        hash: &KeyHash,
        model: Option<&str>,
        estimate: Estimate,
    ) -> Result<(), Denial> {
        // The snapshot version first, then the key: a key entry is written before the
        // version moves, so it shows at least what that version does, and a cost landing
        // after that version is counted by the ledger (perhaps twice for a moment: the
        // safe way). The account's balance comes with this VM's view and its version.
        let (meta, _) = view::read_meta(host).map_err(|_| HOST_FAILED)?;
        let key = super::admit::lookup(host, hash, meta.epoch)?.ok_or(Denial::InvalidApiKey)?;
        let config = &self.plugin.config;
        let ratio = view.tables.ratio(key.group());
        let price = model.and_then(|m| view.tables.price(m));
        if price.is_none() && !config.allow_unpriced_models {
            // A model nobody priced would cost a limited key nothing.
            return Err(Denial::ModelNotPriced);
        }
        let amount = estimate.credits(price, ratio, config.default_output_tokens);
        let key_limit = key.remaining_quota;
        let account_limit = view.tables.balance(key.account());
        let key_ledger = key_limit.map(|_| ledger::key_entry(key.id()));
        let account_ledger = account_limit.map(|_| ledger::account_entry(key.account()));
        if let (Some(name), Some(limit)) = (&key_ledger, key_limit) {
            let admitted = ledger::reserve(host, name, limit, amount, meta.version)
                .map_err(|_| HOST_FAILED)?;
            if !admitted {
                return Err(Denial::InsufficientQuota);
            }
        }
        if let (Some(name), Some(limit)) = (&account_ledger, account_limit) {
            let admitted = ledger::reserve(host, name, limit, amount, view.meta.version)
                .map_err(|_| HOST_FAILED)?;
            if !admitted {
                if let Some(key_ledger) = &key_ledger {
                    let _ = ledger::settle(host, key_ledger, amount, 0);
                }
                return Err(Denial::InsufficientQuota);
            }
        }
        let reservation = Reservation {
            amount,
            key_ledger,
            account_ledger,
            ratio,
            estimate: estimate.tokens(config.default_output_tokens),
        };
        match &mut self.job {
            Job::Meter(meter) => meter.reservation = Some(reservation),
            // Only metered requests reserve; one that is not cannot keep it.
            _ => release(host, reservation),
        }
        Ok(())
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
        let price = self.price_of(model).map(|p| p.for_status(status));
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
        Some(Charge {
            cost,
            key_ledger: reservation.key_ledger?,
            account_ledger: reservation.account_ledger,
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
        let model = meter.model.or_else(|| scanned.model.clone());
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
            let estimate = reservation.as_ref()?.estimate;
            if self
                .price_of(model.as_deref())
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
                // What the key-service stores: an empty or unprintable name is `unknown`.
                model: Some(
                    model
                        .map(|m| model::printable(&m, MODEL_MAX))
                        .filter(|m| !m.trim().is_empty())
                        .unwrap_or_else(|| "unknown".into()),
                ),
                input_tokens: usage.input,
                cached_input_tokens: usage.cached_input,
                output_tokens: usage.output,
                cache_write_tokens: usage.cache_write,
                status: Some(u64::from(status)),
                ts: Some(ts),
                estimated,
            },
            charge: charge.filter(|c| c.cost > 0),
        };
        self.plugin.outbox.borrow_mut().push(record);
        host.count(Event::UsageRecorded(&usage));
        usage.input.saturating_add(usage.output)
    }
}
