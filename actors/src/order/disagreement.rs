//! Disagreements: systems that contradict each other about one order — the one order in four
//! states across sales, WMS, courier and invoicing. Each source has a role (`channel`, `erp`,
//! `wms`, `courier`, `other`); the fold compares the systems' last statuses after every report
//! and flags what contradicts, until it no longer does:
//!
//! - `shipped_without_pickup`: the WMS or ERP says shipped and no courier has collected the
//!   parcel by the deadline of an SLA timer armed in `shipped` (the breach says so);
//! - `cancelled_but_shipped`: the channel says cancelled while the WMS, ERP or courier says it
//!   left the warehouse;
//! - `scan_without_shipment`: a courier scanned the parcel while the WMS, which reports this
//!   order, never said it shipped.

use super::event::Millis;
use super::machine::SystemStatus;
use super::state::OrderState;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What a source is, for comparing what systems say.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceRole {
    /// A sales channel (the platform the buyer ordered on).
    Channel,
    /// The ERP.
    Erp,
    /// The warehouse.
    Wms,
    /// The courier.
    Courier,
    /// Anything else (customer service tools, operators).
    Other,
}

impl SourceRole {
    /// The role of a source nobody configured one for: the built-in channels and sources named
    /// `channel`/`shop` (and their `_api` detail answers) are channels; `wdt` and `wms` the
    /// warehouse; `sf` and `courier` the courier; `erp` and `kingdee` the ERP.
    pub fn default_for(source: &str) -> SourceRole {
        let base = source.strip_suffix("_api").unwrap_or(source);
        match base {
            "douyin" | "youzan" | "taobao" | "tmc" | "jd" | "pdd" | "kuaishou" | "wechat"
            | "channel" | "shop" => SourceRole::Channel,
            "wdt" | "wms" => SourceRole::Wms,
            "sf" | "courier" => SourceRole::Courier,
            "erp" | "kingdee" => SourceRole::Erp,
            _ => SourceRole::Other,
        }
    }
}

/// The kinds of disagreement (the `kind` label of `orderhub_disagreements_total`).
pub const KINDS: [&str; 3] = [
    "shipped_without_pickup",
    "cancelled_but_shipped",
    "scan_without_shipment",
];

/// A contradiction between systems about the order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disagreement {
    /// One of [`KINDS`].
    pub kind: String,
    /// What each system concerned said (source → raw status; `none` for a courier that said
    /// nothing).
    pub systems: BTreeMap<String, String>,
    /// Hub time it was flagged.
    pub since: Millis,
    /// Hub time the systems stopped contradicting each other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<Millis>,
}

fn left_warehouse(mapped: &str) -> bool {
    matches!(
        mapped.parse::<OrderState>(),
        Ok(OrderState::Shipped
            | OrderState::InTransit
            | OrderState::Delivered
            | OrderState::Completed
            | OrderState::InterceptRequested
            | OrderState::Intercepted)
    )
}

fn collected(mapped: &str) -> bool {
    matches!(
        mapped.parse::<OrderState>(),
        Ok(OrderState::InTransit
            | OrderState::Delivered
            | OrderState::Completed
            | OrderState::Returned
            | OrderState::Intercepted)
    )
}

/// The systems of `role` and what they said.
fn of_role<'a>(
    systems: &'a BTreeMap<String, SystemStatus>,
    role: SourceRole,
    role_of: &'a dyn Fn(&str) -> SourceRole,
) -> impl Iterator<Item = (&'a String, &'a SystemStatus)> {
    systems
        .iter()
        .filter(move |(source, _)| role_of(source) == role)
}

/// The contradictions the systems' last statuses show now (`shipped_without_pickup` is judged
/// at an SLA breach, see [`shipped_without_pickup`]), as `(kind, systems)`.
pub(crate) fn judge(
    systems: &BTreeMap<String, SystemStatus>,
    role_of: &dyn Fn(&str) -> SourceRole,
) -> Vec<(&'static str, BTreeMap<String, String>)> {
    let said = |pairs: Vec<(&String, &SystemStatus)>| -> BTreeMap<String, String> {
        pairs
            .into_iter()
            .map(|(source, status)| (source.clone(), status.raw_status.clone()))
            .collect()
    };
    let mut found = Vec::new();
    let cancelled: Vec<_> = of_role(systems, SourceRole::Channel, role_of)
        .filter(|(_, s)| s.mapped == OrderState::Cancelled.as_str())
        .collect();
    let shipped: Vec<_> = systems
        .iter()
        .filter(|(source, s)| {
            matches!(
                role_of(source),
                SourceRole::Wms | SourceRole::Erp | SourceRole::Courier
            ) && left_warehouse(&s.mapped)
        })
        .collect();
    if !cancelled.is_empty() && !shipped.is_empty() {
        let mut both = cancelled;
        both.extend(shipped);
        found.push(("cancelled_but_shipped", said(both)));
    }
    let scans: Vec<_> = of_role(systems, SourceRole::Courier, role_of)
        .filter(|(_, s)| collected(&s.mapped))
        .collect();
    let wms: Vec<_> = of_role(systems, SourceRole::Wms, role_of).collect();
    if !scans.is_empty() && !wms.is_empty() && !wms.iter().any(|(_, s)| left_warehouse(&s.mapped)) {
        let mut both = scans;
        both.extend(wms);
        found.push(("scan_without_shipment", said(both)));
    }
    found
}

/// At the breach of an SLA timer armed in `shipped`: the systems that say shipped, when no
/// courier has said it collected the parcel.
pub(crate) fn shipped_without_pickup(
    systems: &BTreeMap<String, SystemStatus>,
    role_of: &dyn Fn(&str) -> SourceRole,
) -> Option<BTreeMap<String, String>> {
    if of_role(systems, SourceRole::Courier, role_of).any(|(_, s)| collected(&s.mapped)) {
        return None;
    }
    let mut said: BTreeMap<String, String> = systems
        .iter()
        .filter(|(source, s)| {
            matches!(role_of(source), SourceRole::Wms | SourceRole::Erp)
                && s.mapped == OrderState::Shipped.as_str()
        })
        .map(|(source, s)| (source.clone(), s.raw_status.clone()))
        .collect();
    if said.is_empty() {
        return None;
    }
    for (source, status) in of_role(systems, SourceRole::Courier, role_of) {
        said.insert(source.clone(), status.raw_status.clone());
    }
    if !said.keys().any(|s| role_of(s) == SourceRole::Courier) {
        said.insert("courier".into(), "none".into());
    }
    Some(said)
}

/// Whether the courier has now collected (resolves `shipped_without_pickup`).
pub(crate) fn picked_up(
    systems: &BTreeMap<String, SystemStatus>,
    role_of: &dyn Fn(&str) -> SourceRole,
) -> bool {
    of_role(systems, SourceRole::Courier, role_of).any(|(_, s)| collected(&s.mapped))
}
