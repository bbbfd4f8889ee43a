//! Orders on hold, as the dispatchers see them: the order actors mark an order when it goes on
//! hold and unmark it when it leaves, and every dispatcher keeps that order's syncs back until
//! then (they go out, in order, on release). A concurrent map read before every send.

use dashmap::DashMap;
use std::sync::Arc;

/// The orders on hold (shared; cheap to clone), each with the sinks its hold keeps back
/// (`None`: every sink).
#[derive(Clone, Debug, Default)]
pub struct HeldOrders(Arc<DashMap<Arc<str>, HeldSinks>>);

/// The sinks a hold keeps back (`None`: every sink).
type HeldSinks = Option<Arc<[String]>>;

impl HeldOrders {
    /// Marks `order` held for every sink, or not held.
    pub fn set(&self, order: &str, held: bool) {
        if held {
            self.hold(order, None);
        } else {
            self.0.remove(order);
        }
    }

    /// Marks `order` held for `sinks` (`None`: every sink).
    pub fn hold(&self, order: &str, sinks: Option<&[String]>) {
        let sinks: HeldSinks = sinks.map(Arc::from);
        match self.0.get_mut(order) {
            Some(held) if *held == sinks => {}
            Some(mut held) => *held = sinks,
            None => {
                self.0.insert(order.into(), sinks);
            }
        }
    }

    /// Whether `order` is on hold (for any sink).
    pub fn contains(&self, order: &str) -> bool {
        self.0.contains_key(order)
    }

    /// Whether `order`'s syncs to `sink` are held back.
    pub fn holds(&self, order: &str, sink: &str) -> bool {
        self.0.get(order).is_some_and(|held| {
            held.as_ref()
                .is_none_or(|sinks| sinks.iter().any(|s| s == sink))
        })
    }

    /// How many orders are on hold.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}
