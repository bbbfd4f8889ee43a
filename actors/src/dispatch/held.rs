//! Orders on hold, as the dispatchers see them: the order actors mark an order when it goes on
//! hold and unmark it when it leaves, and every dispatcher keeps that order's syncs back until
//! then (they go out, in order, on release). A concurrent map read before every send.

use dashmap::DashMap;
use std::sync::Arc;

/// The orders on hold (shared; cheap to clone).
#[derive(Clone, Debug, Default)]
pub struct HeldOrders(Arc<DashMap<Arc<str>, ()>>);

impl HeldOrders {
    /// Marks `order` held or not.
    pub fn set(&self, order: &str, held: bool) {
        if held {
            if !self.0.contains_key(order) {
                self.0.insert(order.into(), ());
            }
        } else {
            self.0.remove(order);
        }
    }

    /// Whether `order` is on hold.
    pub fn contains(&self, order: &str) -> bool {
        self.0.contains_key(order)
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
