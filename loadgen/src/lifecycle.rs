//! Order lifecycles: what each simulated order reports, from which system, when. Channels
//! report creation, payment, cancellation and completion; the WMS allocation to shipping;
//! the courier collection and delivery. Duplicated deliveries, out-of-order deliveries and
//! cancellations happen at configurable rates, from a seeded generator.

use std::time::Duration;

/// Where an order comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Channel {
    /// Douyin Shop push (signed md5).
    Douyin,
    /// A custom shop sending canonical events (Standard Webhooks).
    Shop,
    /// Youzan push (signed md5, URL-encoded msg).
    Youzan,
}

impl Channel {
    /// The channel of an order key this tool made.
    pub fn of_key(key: &str) -> Channel {
        if key.starts_with("douyin:") {
            Channel::Douyin
        } else if key.starts_with("youzan:") {
            Channel::Youzan
        } else {
            Channel::Shop
        }
    }

    /// Parses a channel name.
    pub fn parse(name: &str) -> Option<Channel> {
        match name {
            "douyin" => Some(Channel::Douyin),
            "shop" | "events" => Some(Channel::Shop),
            "youzan" => Some(Channel::Youzan),
            _ => None,
        }
    }
}

/// One report an order makes.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// Canonical state it reports.
    pub state: &'static str,
    /// The reporting system: the channel, `wms` or `courier`.
    pub system: System,
    /// When to send it, from the order's arrival.
    pub at: Duration,
    /// A redelivery of the previous step (same event id).
    pub duplicate: bool,
}

/// Which system reports a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum System {
    /// The sales channel.
    Channel,
    /// The warehouse.
    Wms,
    /// The courier.
    Courier,
}

/// Rates of the anomalies real channels produce.
#[derive(Clone, Copy, Debug, Default)]
pub struct Anomalies {
    /// Probability that a report is delivered twice.
    pub duplicate: f64,
    /// Probability that an order's WMS reports arrive out of order.
    pub out_of_order: f64,
    /// Probability that an order is cancelled after payment.
    pub cancel: f64,
}

/// A simulated order's plan.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The reports, in send order.
    pub steps: Vec<Step>,
    /// The state the engine must end in.
    pub final_state: &'static str,
}

const FULFILMENT: [(&str, System); 7] = [
    ("allocated", System::Wms),
    ("picked", System::Wms),
    ("packed", System::Wms),
    ("shipped", System::Wms),
    ("in_transit", System::Courier),
    ("delivered", System::Courier),
    ("completed", System::Channel),
];

/// Draws an order's plan; `gap` bounds the time between two reports.
pub fn plan(rng: &mut fastrand::Rng, anomalies: Anomalies, gap: (Duration, Duration)) -> Plan {
    let mut at = Duration::ZERO;
    let mut steps = Vec::with_capacity(12);
    let mut next = |rng: &mut fastrand::Rng| {
        let span = gap.1.saturating_sub(gap.0).as_millis() as u64;
        at += gap.0 + Duration::from_millis(rng.u64(0..=span));
        at
    };
    let push = |steps: &mut Vec<Step>, state, system, at| {
        steps.push(Step {
            state,
            system,
            at,
            duplicate: false,
        });
    };
    push(
        &mut steps,
        "pending_payment",
        System::Channel,
        Duration::ZERO,
    );
    push(&mut steps, "paid", System::Channel, next(rng));
    let final_state = if rng.f64() < anomalies.cancel {
        push(&mut steps, "cancelled", System::Channel, next(rng));
        "cancelled"
    } else {
        for (state, system) in FULFILMENT {
            push(&mut steps, state, system, next(rng));
        }
        if rng.f64() < anomalies.out_of_order {
            // picked and packed arrive swapped: the late one is kept but changes nothing.
            let (a, b) = (steps[3].at, steps[4].at);
            steps[3].at = b;
            steps[4].at = a;
            steps.swap(3, 4);
        }
        "completed"
    };
    let mut with_duplicates = Vec::with_capacity(steps.len() + 2);
    for step in steps {
        let again = rng.f64() < anomalies.duplicate;
        let redelivery = Step {
            at: step.at + Duration::from_millis(rng.u64(20..=400)),
            duplicate: true,
            ..step.clone()
        };
        with_duplicates.push(step);
        if again {
            with_duplicates.push(redelivery);
        }
    }
    with_duplicates.sort_by_key(|s| s.at);
    Plan {
        steps: with_duplicates,
        final_state,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_follow_the_lifecycle_and_the_anomaly_rates() {
        let mut rng = fastrand::Rng::with_seed(7);
        let gap = (Duration::from_millis(10), Duration::from_millis(50));
        let plain = plan(&mut rng, Anomalies::default(), gap);
        let states: Vec<&str> = plain.steps.iter().map(|s| s.state).collect();
        assert_eq!(
            states,
            [
                "pending_payment",
                "paid",
                "allocated",
                "picked",
                "packed",
                "shipped",
                "in_transit",
                "delivered",
                "completed"
            ]
        );
        assert_eq!(plain.final_state, "completed");
        let cancelled = plan(
            &mut rng,
            Anomalies {
                cancel: 1.0,
                ..Anomalies::default()
            },
            gap,
        );
        assert_eq!(cancelled.final_state, "cancelled");
        assert_eq!(cancelled.steps.last().unwrap().state, "cancelled");
        let messy = plan(
            &mut rng,
            Anomalies {
                duplicate: 1.0,
                out_of_order: 1.0,
                cancel: 0.0,
            },
            gap,
        );
        assert_eq!(messy.steps.iter().filter(|s| s.duplicate).count(), 9);
        let position = |state| {
            messy
                .steps
                .iter()
                .position(|s| s.state == state && !s.duplicate)
                .unwrap()
        };
        assert!(position("packed") < position("picked"), "out of order");
        // Same seed, same plans.
        let a = plan(
            &mut fastrand::Rng::with_seed(1),
            Anomalies {
                duplicate: 0.3,
                out_of_order: 0.3,
                cancel: 0.3,
            },
            gap,
        );
        let b = plan(
            &mut fastrand::Rng::with_seed(1),
            Anomalies {
                duplicate: 0.3,
                out_of_order: 0.3,
                cancel: 0.3,
            },
            gap,
        );
        assert_eq!(a.steps, b.steps);
    }
}
