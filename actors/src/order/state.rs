//! The canonical order states (DESIGN.md §4) and the forward-only graph between them.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// One canonical order state. Every source's status is mapped onto one of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderState {
    /// Created, not paid yet.
    PendingPayment,
    /// Paid by the buyer.
    Paid,
    /// Stock allocated by the warehouse.
    Allocated,
    /// Picked in the warehouse.
    Picked,
    /// Packed and labelled.
    Packed,
    /// Left the warehouse (WMS outbound).
    Shipped,
    /// Collected by the courier.
    InTransit,
    /// Signed for by the buyer.
    Delivered,
    /// Closed successfully.
    Completed,
    /// Cancelled before it was shipped.
    Cancelled,
    /// Held by an exception interception; released back to where it was.
    OnHold,
    /// Interception requested after shipping.
    InterceptRequested,
    /// The courier intercepted the parcel.
    Intercepted,
    /// The buyer asked to return it.
    ReturnRequested,
    /// The goods came back.
    Returned,
    /// The money went back.
    Refunded,
}

/// Number of canonical states.
pub const STATE_COUNT: usize = 16;

/// `none` (an order's first state has no predecessor) followed by every state's name, in
/// declaration order: the values of the `from` metric label.
pub const STATE_LABELS_WITH_NONE: [&str; STATE_COUNT + 1] = [
    "none",
    "pending_payment",
    "paid",
    "allocated",
    "picked",
    "packed",
    "shipped",
    "in_transit",
    "delivered",
    "completed",
    "cancelled",
    "on_hold",
    "intercept_requested",
    "intercepted",
    "return_requested",
    "returned",
    "refunded",
];

impl OrderState {
    /// Every state, in declaration order (the index is `state as usize`).
    pub const ALL: [OrderState; STATE_COUNT] = [
        OrderState::PendingPayment,
        OrderState::Paid,
        OrderState::Allocated,
        OrderState::Picked,
        OrderState::Packed,
        OrderState::Shipped,
        OrderState::InTransit,
        OrderState::Delivered,
        OrderState::Completed,
        OrderState::Cancelled,
        OrderState::OnHold,
        OrderState::InterceptRequested,
        OrderState::Intercepted,
        OrderState::ReturnRequested,
        OrderState::Returned,
        OrderState::Refunded,
    ];

    /// The snake_case name used in config, the API and metric labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            OrderState::PendingPayment => "pending_payment",
            OrderState::Paid => "paid",
            OrderState::Allocated => "allocated",
            OrderState::Picked => "picked",
            OrderState::Packed => "packed",
            OrderState::Shipped => "shipped",
            OrderState::InTransit => "in_transit",
            OrderState::Delivered => "delivered",
            OrderState::Completed => "completed",
            OrderState::Cancelled => "cancelled",
            OrderState::OnHold => "on_hold",
            OrderState::InterceptRequested => "intercept_requested",
            OrderState::Intercepted => "intercepted",
            OrderState::ReturnRequested => "return_requested",
            OrderState::Returned => "returned",
            OrderState::Refunded => "refunded",
        }
    }

    /// Whether `to` lies strictly forward of `self` in the state graph. `OnHold` is an overlay,
    /// not part of the graph: nothing is reachable from it and it is reachable from nothing.
    pub const fn reaches(self, to: OrderState) -> bool {
        REACHABLE[self as usize] & (1 << to as usize) != 0
    }

    /// States from which an order may be put on hold.
    pub const fn can_hold(self) -> bool {
        matches!(
            self,
            OrderState::Paid | OrderState::Allocated | OrderState::Picked | OrderState::Packed
        )
    }
}

impl fmt::Display for OrderState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not a canonical state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown canonical state {0:?}")]
pub struct UnknownState(pub String);

impl FromStr for OrderState {
    type Err = UnknownState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        OrderState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_owned()))
    }
}

/// Direct forward edges (DESIGN.md §4). `Shipped → Delivered` and the like follow by transitivity,
/// so a late courier scan never blocks a later state.
const fn successors(state: OrderState) -> u32 {
    use OrderState::*;
    const fn bit(s: OrderState) -> u32 {
        1 << s as usize
    }
    match state {
        PendingPayment => bit(Paid) | bit(Cancelled),
        // An intercept may be requested from paid up to in transit.
        Paid => bit(Allocated) | bit(Cancelled) | bit(InterceptRequested),
        Allocated => bit(Picked) | bit(Cancelled) | bit(InterceptRequested),
        Picked => bit(Packed) | bit(Cancelled) | bit(InterceptRequested),
        Packed => bit(Shipped) | bit(Cancelled) | bit(InterceptRequested),
        Shipped => bit(InTransit) | bit(InterceptRequested),
        InTransit => bit(Delivered) | bit(InterceptRequested) | bit(Returned),
        Delivered => bit(Completed) | bit(ReturnRequested),
        Completed => bit(ReturnRequested),
        Cancelled => bit(Refunded),
        OnHold => 0,
        InterceptRequested => bit(Intercepted),
        Intercepted => bit(Returned),
        ReturnRequested => bit(Returned),
        Returned => bit(Refunded),
        Refunded => 0,
    }
}

/// Transitive closure of [`successors`], computed at compile time.
const REACHABLE: [u32; STATE_COUNT] = {
    let mut table = [0u32; STATE_COUNT];
    let mut i = 0;
    while i < STATE_COUNT {
        table[i] = successors(OrderState::ALL[i]);
        i += 1;
    }
    let mut changed = true;
    while changed {
        changed = false;
        let mut i = 0;
        while i < STATE_COUNT {
            let mut acc = table[i];
            let mut j = 0;
            while j < STATE_COUNT {
                if table[i] & (1 << j) != 0 {
                    acc |= table[j];
                }
                j += 1;
            }
            if acc != table[i] {
                table[i] = acc;
                changed = true;
            }
            i += 1;
        }
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for state in OrderState::ALL {
            assert_eq!(state.as_str().parse::<OrderState>(), Ok(state));
            let json = serde_json::to_string(&state).unwrap();
            assert_eq!(json, format!("\"{}\"", state.as_str()));
        }
        assert!("shipping".parse::<OrderState>().is_err());
    }

    #[test]
    fn graph_is_acyclic_and_forward() {
        for state in OrderState::ALL {
            assert!(!state.reaches(state), "{state} reaches itself");
        }
        use OrderState::*;
        assert!(PendingPayment.reaches(Completed));
        assert!(Paid.reaches(Delivered));
        assert!(Packed.reaches(Cancelled));
        assert!(!Shipped.reaches(Cancelled), "no cancel after shipping");
        assert!(Shipped.reaches(Refunded));
        assert!(Cancelled.reaches(Refunded));
        assert!(!Delivered.reaches(Paid));
        assert!(!OnHold.reaches(Paid) && !Paid.reaches(OnHold));
    }
}
