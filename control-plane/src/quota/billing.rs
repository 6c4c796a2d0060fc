//! Billing arithmetic: a period's lines from the plan's terms and the usage
//! counted, in integer minor units only. The base line is the plan's
//! monthly price for each period (not prorated: a plan change mid-month
//! bills both periods' base prices; prorating is the payment system's
//! choice). Under BILL, tokens past the limit cost per started thousand
//! (rounded up) and messages past the limit per message; under BLOCK the
//! allowance cannot be exceeded on purpose, so nothing is billed past it.
use crate::store::OveragePolicy;

/// What a plan charges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terms {
    pub plan_display_name: String,
    pub price_minor: i64,
    pub message_limit: i64,
    pub token_limit: i64,
    pub policy: OveragePolicy,
    pub per_1k_tokens_minor: i64,
    pub per_message_minor: i64,
}

/// One line of a bill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// "base", "overage_tokens" or "overage_messages".
    pub kind: &'static str,
    pub description: String,
    pub quantity: i64,
    pub unit_price_minor: i64,
    pub amount_minor: i64,
}

/// Usage past a limit (0 = unlimited: never past it).
fn excess(used: i64, limit: i64) -> i64 {
    if limit > 0 {
        used.saturating_sub(limit).max(0)
    } else {
        0
    }
}

/// The period's lines, base first.
pub fn lines(terms: &Terms, messages_used: i64, tokens_used: i64) -> Vec<Line> {
    let mut lines = vec![Line {
        kind: "base",
        description: format!("{} plan", terms.plan_display_name),
        quantity: 1,
        unit_price_minor: terms.price_minor,
        amount_minor: terms.price_minor,
    }];
    if terms.policy != OveragePolicy::Bill {
        return lines;
    }
    let tokens = excess(tokens_used, terms.token_limit);
    if tokens > 0 {
        // Started thousands: 1 token past the limit bills one thousand.
        let thousands = tokens / 1000 + i64::from(tokens % 1000 != 0);
        lines.push(Line {
            kind: "overage_tokens",
            description: format!("{tokens} tokens past the plan's {} (per 1,000, rounded up)", terms.token_limit),
            quantity: tokens,
            unit_price_minor: terms.per_1k_tokens_minor,
            amount_minor: thousands.saturating_mul(terms.per_1k_tokens_minor),
        });
    }
    let messages = excess(messages_used, terms.message_limit);
    if messages > 0 {
        lines.push(Line {
            kind: "overage_messages",
            description: format!("{messages} messages past the plan's {}", terms.message_limit),
            quantity: messages,
            unit_price_minor: terms.per_message_minor,
            amount_minor: messages.saturating_mul(terms.per_message_minor),
        });
    }
    lines
}

/// The sum of the lines.
pub fn total(lines: &[Line]) -> i64 {
    lines.iter().fold(0i64, |sum, line| sum.saturating_add(line.amount_minor))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terms(policy: OveragePolicy) -> Terms {
        Terms {
            plan_display_name: "Pro".into(),
            price_minor: 2_000,
            message_limit: 100,
            token_limit: 10_000,
            policy,
            per_1k_tokens_minor: 3,
            per_message_minor: 5,
        }
    }

    #[test]
    fn overage_is_billed_in_integer_minor_units() {
        use OveragePolicy::{Bill, Block};
        // (policy, messages, tokens, expected (kind, quantity, amount) lines, total)
        let cases: &[(OveragePolicy, i64, i64, &[(&str, i64, i64)], i64)] = &[
            (Bill, 0, 0, &[("base", 1, 2_000)], 2_000),
            (Bill, 100, 10_000, &[("base", 1, 2_000)], 2_000),
            (Bill, 0, 10_001, &[("base", 1, 2_000), ("overage_tokens", 1, 3)], 2_003),
            (Bill, 0, 11_000, &[("base", 1, 2_000), ("overage_tokens", 1_000, 3)], 2_003),
            (Bill, 0, 11_001, &[("base", 1, 2_000), ("overage_tokens", 1_001, 6)], 2_006),
            (Bill, 103, 0, &[("base", 1, 2_000), ("overage_messages", 3, 15)], 2_015),
            (Bill, 101, 12_500, &[("base", 1, 2_000), ("overage_tokens", 2_500, 9), ("overage_messages", 1, 5)], 2_014),
            (Block, 1_000, 1_000_000, &[("base", 1, 2_000)], 2_000),
        ];
        for (policy, messages, tokens, expected, expected_total) in cases {
            let got = lines(&terms(*policy), *messages, *tokens);
            let shape: Vec<(&str, i64, i64)> = got.iter().map(|l| (l.kind, l.quantity, l.amount_minor)).collect();
            assert_eq!(shape, expected.to_vec(), "{policy:?} messages={messages} tokens={tokens}");
            assert_eq!(total(&got), *expected_total);
        }
    }

    #[test]
    fn unlimited_plans_have_no_overage_and_huge_numbers_saturate() {
        let unlimited = Terms { message_limit: 0, token_limit: 0, ..terms(OveragePolicy::Bill) };
        assert_eq!(lines(&unlimited, i64::MAX, i64::MAX).len(), 1);
        let dear = Terms { per_1k_tokens_minor: i64::MAX, ..terms(OveragePolicy::Bill) };
        let got = lines(&dear, 0, i64::MAX);
        assert_eq!(got[1].amount_minor, i64::MAX);
        assert_eq!(total(&got), i64::MAX);
    }
}
