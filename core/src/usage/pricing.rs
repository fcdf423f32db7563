//! What one request costs, in credits, by the contract's formula:
//! `ceil(((input - cached) * price.input + cached * price.cached_input
//! + output * price.output) / 1e6 * group.ratio)`.

// Shared by the key-service, which bills each reported request, and the filter, which
// reserves an estimate before a request and settles what it used after (`ledger`).

/// The most tokens of one kind (input, cached input, output) one request is billed for:
/// far beyond any model's context, so only a fault or a lie reaches it. Larger counts are
/// billed as this many.
pub const MAX_RECORD_TOKENS: u64 = 1_000_000_000;

/// The most credits one request costs; larger costs are billed as this much. With it, sums
/// of a billion requests' costs still fit an `i64`.
pub const MAX_RECORD_COST: i64 = 1_000_000_000_000_000;

/// Tokens of one request as the filter read them from the response.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tokens {
    /// All input tokens, cached ones included (as OpenAI and Gemini count them).
    pub input: u64,
    pub cached_input: u64,
    pub output: u64,
    /// Input tokens written to the provider's prompt cache (part of `input`).
    pub cache_write: u64,
}

/// Prices in credits per 1,000,000 tokens, and per call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    pub input: f64,
    pub cached_input: f64,
    pub output: f64,
    /// For tokens written to the prompt cache (Anthropic charges 1.25x input for them).
    pub cache_write: f64,
    /// Credits per call, whatever its tokens (0 for most models).
    pub per_request: f64,
}

impl Price {
    /// The price of a call that ended with `status`, as its usage record has it (499: the
    /// client left before any answer). A call the provider failed (400 or more) is not
    /// charged per call; one the client left is, as the provider had the request.
    pub fn for_status(self, status: u16) -> Price {
        if status >= 400 && status != 499 {
            Price {
                per_request: 0.0,
                ..self
            }
        } else {
            self
        }
    }
}

impl Tokens {
    /// Each count at most [`MAX_RECORD_TOKENS`], cached input at most input, and cache
    /// writes at most the input left.
    pub fn bounded(self) -> Tokens {
        let input = self.input.min(MAX_RECORD_TOKENS);
        let cached_input = self.cached_input.min(input);
        Tokens {
            input,
            cached_input,
            output: self.output.min(MAX_RECORD_TOKENS),
            cache_write: self.cache_write.min(input - cached_input),
        }
    }
}

/// The cost in whole credits (rounded up, at most [`MAX_RECORD_COST`]); a model without a
/// price costs 0. Counts above [`MAX_RECORD_TOKENS`] are priced as that many.
pub fn cost(tokens: Tokens, price: Option<Price>, ratio: f64) -> i64 {
    let Some(price) = price else {
        return 0;
    };
    // More cached than input tokens would be a provider's error: count them as input.
    let tokens = tokens.bounded();
    let cached = tokens.cached_input;
    // `bounded` keeps both within input.
    let plain = tokens.input - cached - tokens.cache_write;
    let micro = plain as f64 * price.input
        + cached as f64 * price.cached_input
        + tokens.cache_write as f64 * price.cache_write
        + tokens.output as f64 * price.output;
    let credits = ((micro / 1e6 + price.per_request) * ratio).ceil();
    if credits.is_finite() && credits > 0.0 {
        // `as` saturates at i64::MAX for absurd prices rather than wrapping.
        (credits as i64).min(MAX_RECORD_COST)
    } else if credits > 0.0 {
        MAX_RECORD_COST
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const GPT4O: Price = Price {
        input: 2_500_000.0,
        cached_input: 1_250_000.0,
        output: 10_000_000.0,
        cache_write: 3_125_000.0,
        per_request: 0.0,
    };

    fn tokens(input: u64, cached_input: u64, output: u64) -> Tokens {
        Tokens {
            input,
            cached_input,
            output,
            cache_write: 0,
        }
    }

    #[test]
    fn cache_writes_are_priced_at_their_own_rate() {
        // Anthropic: 1,000 in of which 200 read from the cache and 300 written to it.
        let written = Tokens {
            cache_write: 300,
            ..tokens(1000, 200, 0)
        };
        // 500 * 2.5 + 200 * 1.25 + 300 * 3.125 = 2437.5 credits per million tokens.
        assert_eq!(cost(written, Some(GPT4O), 1.0), 2438);
        // More written than the input left: bounded by it.
        let lie = Tokens {
            cache_write: u64::MAX,
            ..tokens(1000, 200, 0)
        };
        assert_eq!(lie.bounded().cache_write, 800);
    }

    #[test]
    fn the_contract_formula_rounded_up() {
        // (1000 - 200) * 2.5 + 200 * 1.25 + 50 * 10 = 2750 credits per token-million...
        assert_eq!(cost(tokens(1000, 200, 50), Some(GPT4O), 1.0), 2750);
        assert_eq!(cost(tokens(1000, 200, 50), Some(GPT4O), 0.5), 1375);
        let cheap = Price {
            input: 0.15,
            cached_input: 0.075,
            output: 0.6,
            cache_write: 0.15,
            per_request: 0.0,
        };
        // 10 * 0.15 / 1e6 is a tiny fraction: still one credit.
        assert_eq!(cost(tokens(10, 0, 0), Some(cheap), 1.0), 1);
        assert_eq!(cost(tokens(0, 0, 0), Some(cheap), 1.0), 0);
    }

    #[test]
    fn a_price_per_call_adds_to_the_tokens_and_takes_the_ratio() {
        let per_call = Price {
            per_request: 40.0,
            ..GPT4O
        };
        assert_eq!(cost(tokens(0, 0, 0), Some(per_call), 1.0), 40);
        assert_eq!(cost(tokens(1000, 200, 50), Some(per_call), 0.5), 1375 + 20);
        assert_eq!(
            cost(tokens(0, 0, 0), Some(per_call.for_status(500)), 1.0),
            0
        );
        assert_eq!(
            cost(tokens(0, 0, 0), Some(per_call.for_status(429)), 1.0),
            0
        );
        assert_eq!(
            cost(tokens(0, 0, 0), Some(per_call.for_status(499)), 1.0),
            40
        );
        assert_eq!(
            cost(tokens(0, 0, 0), Some(per_call.for_status(200)), 1.0),
            40
        );
        let absurd = Price {
            per_request: f64::MAX,
            ..GPT4O
        };
        assert_eq!(cost(tokens(0, 0, 0), Some(absurd), 2.0), MAX_RECORD_COST);
    }

    #[test]
    fn unpriced_models_and_free_groups_cost_nothing() {
        assert_eq!(cost(tokens(1000, 0, 1000), None, 1.0), 0);
        assert_eq!(cost(tokens(1000, 0, 1000), Some(GPT4O), 0.0), 0);
    }

    #[test]
    fn odd_counts_neither_go_negative_nor_wrap() {
        assert_eq!(
            cost(tokens(100, 500, 0), Some(GPT4O), 1.0),
            cost(tokens(100, 100, 0), Some(GPT4O), 1.0)
        );
        assert_eq!(
            cost(tokens(u64::MAX, 0, u64::MAX), Some(GPT4O), 1e9),
            MAX_RECORD_COST
        );
        let huge = Price {
            input: f64::MAX,
            cached_input: f64::MAX,
            output: f64::MAX,
            cache_write: f64::MAX,
            per_request: 0.0,
        };
        // Infinite before rounding: the most a record costs, not 0.
        assert_eq!(
            cost(tokens(u64::MAX, 0, u64::MAX), Some(huge), f64::MAX),
            MAX_RECORD_COST
        );
        // Counts beyond the bound cost what the bound does.
        assert_eq!(
            cost(tokens(u64::MAX, u64::MAX, 0), Some(GPT4O), 1.0),
            cost(
                tokens(MAX_RECORD_TOKENS, MAX_RECORD_TOKENS, 0),
                Some(GPT4O),
                1.0
            )
        );
        let bounded = tokens(u64::MAX, u64::MAX - 1, 5).bounded();
        assert_eq!(
            bounded,
            tokens(MAX_RECORD_TOKENS, MAX_RECORD_TOKENS, 5),
            "cached never above input"
        );
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn price() -> impl Strategy<Value = Price> {
        (
            0.0..1e12f64,
            0.0..1e12f64,
            0.0..1e12f64,
            0.0..1e12f64,
            0.0..1e9f64,
        )
            .prop_map(
                |(input, cached_input, output, cache_write, per_request)| Price {
                    input,
                    cached_input,
                    output,
                    cache_write,
                    per_request,
                },
            )
    }

    proptest! {
        /// At the u64 extremes and anywhere between: no panic, never negative, never more
        /// than a record may cost, and more tokens never cost less.
        #[test]
        fn costs_are_bounded_and_monotonic(
            input in any::<u64>(), cached in any::<u64>(), output in any::<u64>(),
            more in any::<u64>(), price in price(), ratio in 0.0..1e6f64,
        ) {
            let tokens = Tokens { input, cached_input: cached, output, cache_write: more };
            let c = cost(tokens, Some(price), ratio);
            prop_assert!((0..=MAX_RECORD_COST).contains(&c));
            let bigger = Tokens { output: output.saturating_add(more), ..tokens };
            prop_assert!(cost(bigger, Some(price), ratio) >= c);
            prop_assert_eq!(cost(tokens, None, ratio), 0);
        }
    }
}
