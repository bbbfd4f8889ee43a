//! The metric catalogue: every metric orderhub exports, with its help text, unit and labels.
//! Code refers to metrics only through the names here; dashboards and alerts likewise.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

/// What kind of series a metric is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    /// Monotone count.
    Counter,
    /// Value that goes up and down.
    Gauge,
    /// Distribution of observations.
    Histogram,
}

/// One catalogued metric.
#[derive(Clone, Copy, Debug)]
pub struct MetricDef {
    /// Full Prometheus name.
    pub name: &'static str,
    /// Series kind.
    pub kind: MetricKind,
    /// Unit of the values.
    pub unit: Unit,
    /// Help text.
    pub help: &'static str,
    /// Label names (each from a small fixed set of values).
    pub labels: &'static [&'static str],
}

macro_rules! catalogue {
    ($( $(#[$doc:meta])* $const:ident = $name:literal, $kind:ident, $unit:ident, [$($label:literal),*], $help:literal; )*) => {
        $( $(#[$doc])* pub const $const: &str = $name; )*
        /// Every metric, in catalogue order.
        pub const CATALOGUE: &[MetricDef] = &[
            $( MetricDef { name: $name, kind: MetricKind::$kind, unit: Unit::$unit, help: $help, labels: &[$($label),*] }, )*
        ];
    };
}

catalogue! {
    /// Ingest HTTP requests.
    INGEST_REQUESTS = "orderhub_ingest_requests_total", Counter, Count, ["source", "outcome"],
        "Ingest requests by source and outcome (accepted, duplicate, verification, or the rejection reason).";
    /// Events carried by accepted ingest requests.
    INGEST_EVENTS = "orderhub_ingest_events_total", Counter, Count, ["source", "outcome"],
        "Messages of accepted ingest requests by source; outcome is appended, duplicate, parked (a courier scan waiting for its waybill's order) or rejected (a malformed message of a batch, listed in GET /v1/sources).";
    /// Events whose raw status the source's mapping does not know.
    INGEST_UNMAPPED = "orderhub_ingest_unmapped_total", Counter, Count, ["source"],
        "Events journaled with a raw status, tag or type the source's mapping does not know: recorded and acknowledged, no state change (GET /v1/sources lists the raw values).";
    /// Ingest latency.
    INGEST_LATENCY = "orderhub_ingest_latency_seconds", Histogram, Seconds, ["source"],
        "Time from receiving an ingest request to answering it, including the journal fsync.";
    /// Order-detail fetches.
    DETAILS_FETCHES = "orderhub_details_fetches_total", Counter, Count, ["channel", "outcome"],
        "Order-detail API calls by channel and outcome: fetched, throttled (the platform's call limit), failed (transport, 5xx, retried), token_expired (the platform refused the token: renewed and the call repeated), credentials (refused: enrichment waits), refused (the order, for good), malformed (an answer not in the documented shape).";
    /// Token renewals of order-detail clients.
    DETAILS_TOKEN_RENEWALS = "orderhub_details_token_renewals_total", Counter, Count, ["channel", "outcome"],
        "Access-token renewals of a channel's order-detail client (on first use, before expiry, and after the platform called a token expired): renewed, refused (the credentials: enrichment waits), failed (transient).";
    /// Whether a channel's enrichment can run.
    DETAILS_AVAILABLE = "orderhub_details_available", Gauge, Count, ["channel"],
        "1 while a channel's order-detail enrichment has its credentials, 0 when one is missing at start-up or the platform refused them (orders from it then carry only what pushes say).";
    /// Connection-based channel up.
    CHANNEL_CONNECTED = "orderhub_channel_connected", Gauge, Count, ["source"],
        "1 while the connection to a connection-based channel (Pinduoduo, TMC) is up, else 0.";
    /// Reconnects of connection-based channels.
    CHANNEL_RECONNECTS = "orderhub_channel_reconnects_total", Counter, Count, ["source"],
        "Times a connection-based channel's connection ended or failed and was retried.";
    /// Poller runs.
    POLL_RUNS = "orderhub_poll_runs_total", Counter, Count, ["source", "outcome"],
        "Poller windows read, by source and outcome (ok, failed: the window is read again).";
    /// Polled orders.
    POLL_ITEMS = "orderhub_poll_items_total", Counter, Count, ["source", "outcome"],
        "Orders a poller saw, by outcome: journaled (new to orderhub; a status its table does not know is journaled as unmapped), known (a push already told us), refused (no order id or status, or not usable: the window is read again).";
    /// Poller cursor age.
    POLL_CURSOR_AGE = "orderhub_poll_cursor_age_seconds", Gauge, Seconds, ["source"],
        "How far behind now a poller's cursor is (every change before it has been read).";
    /// Events appended to the journal.
    JOURNAL_APPENDED = "orderhub_journal_appended_events_total", Counter, Count, [],
        "Events durably appended to the journal (duplicates excluded).";
    /// Events per group commit.
    JOURNAL_BATCH_SIZE = "orderhub_journal_batch_events", Histogram, Count, [],
        "Events written per journal group commit.";
    /// Group commit latency.
    JOURNAL_COMMIT_LATENCY = "orderhub_journal_commit_seconds", Histogram, Seconds, [],
        "Time to write and fsync one journal group commit.";
    /// Journal queue depth.
    JOURNAL_QUEUE_DEPTH = "orderhub_journal_queue_depth", Gauge, Count, [],
        "Append requests waiting for the journal writer.";
    /// Journal queue oldest age.
    JOURNAL_QUEUE_OLDEST = "orderhub_journal_queue_oldest_seconds", Gauge, Seconds, [],
        "Age of the oldest append request waiting for the journal writer.";
    /// Index updates waiting.
    JOURNAL_INDEX_BACKLOG = "orderhub_journal_index_backlog", Gauge, Count, [],
        "Order summaries and internal events waiting for the journal writer.";
    /// Orders given up on and not folded since.
    JOURNAL_UNFOLDED = "orderhub_journal_unfolded_orders", Gauge, Count, [],
        "Orders whose actor was given up on (it could not start, kept crashing, or its events could not be read or folded at start-up) and that no summary has folded since: their rows in order lists may be behind their events or missing. Each is folded again at every start (the journal's unfolded table).";
    /// Journal size on disk.
    JOURNAL_DISK_BYTES = "orderhub_journal_disk_bytes", Gauge, Bytes, [],
        "Bytes the journal takes on disk (database and WAL).";
    /// Oldest event age.
    JOURNAL_OLDEST_EVENT_AGE = "orderhub_journal_oldest_event_age_seconds", Gauge, Seconds, [],
        "Age (hub time) of the oldest event still in the journal: about `journal.retain` plus the longest-open order once compaction keeps up.";
    /// Orders archived.
    JOURNAL_ARCHIVED_ORDERS = "orderhub_journal_archived_orders_total", Counter, Count, [],
        "Finished orders compaction archived (or removed, with archiving off) and removed from the journal.";
    /// Compaction passes.
    JOURNAL_COMPACTIONS = "orderhub_journal_compactions_total", Counter, Count, ["outcome"],
        "Compaction passes run, by outcome (ok, failed).";
    /// Data dir free space.
    DATA_DIR_FREE_BYTES = "orderhub_data_dir_free_bytes", Gauge, Bytes, [],
        "Bytes free to the engine on the data directory's file system.";
    /// Journal failures.
    JOURNAL_ERRORS = "orderhub_journal_errors_total", Counter, Count, ["kind"],
        "Journal operations that failed, by kind.";
    /// Active actors.
    ACTORS_ACTIVE = "orderhub_actors_active", Gauge, Count, [],
        "Order actors currently in memory.";
    /// Actors started.
    ACTORS_SPAWNED = "orderhub_actors_spawned_total", Counter, Count, [],
        "Order actors started (first event, timer, or reactivation after passivation).";
    /// Actors passivated.
    ACTORS_PASSIVATED = "orderhub_actors_passivated_total", Counter, Count, ["reason"],
        "Order actors passivated, by reason (idle, capacity, shutdown).";
    /// Actors restarted after a crash.
    ACTORS_RESTARTS = "orderhub_actors_restarts_total", Counter, Count, [],
        "Order actors restarted from the journal after they crashed.";
    /// Actor failures that were not restarted.
    ACTORS_FAILURES = "orderhub_actors_failures_total", Counter, Count, ["kind"],
        "Orders given up on, by kind: an actor that could not start (start) or crashed beyond the restart limit (crash_loop), or an order start-up recovery could not read or fold (recovery; counted before the first scrape, so alert on orderhub_journal_unfolded_orders instead).";
    /// Events routed but not applied yet.
    ACTORS_PENDING_EVENTS = "orderhub_actors_pending_events", Gauge, Count, [],
        "Journaled events routed to shards and not yet applied by their order actor.";
    /// Canonical transitions.
    ORDERS_TRANSITIONS = "orderhub_orders_transitions_total", Counter, Count, ["from", "to"],
        "Canonical state transitions (from is none for an order's first state).";
    /// Orders per state.
    ORDERS_BY_STATE = "orderhub_orders_by_state", Gauge, Count, ["state"],
        "Orders currently in each canonical state (in cluster mode: of the partitions this node holds, so the nodes' values add up to the cluster's).";
    /// Outcomes of applied events.
    ORDERS_EVENT_OUTCOMES = "orderhub_orders_event_outcomes_total", Counter, Count, ["outcome"],
        "Events applied to orders by outcome (applied, unchanged, stale, conflict, not_allowed, ...).";
    /// Holds by rules.
    ORDERS_HOLDS = "orderhub_orders_holds_total", Counter, Count, ["rule"],
        "Orders put on hold by a rule (exception interception); each is also logged as a warning.";
    /// Approvals by flow and what happened to them.
    APPROVALS = "orderhub_approvals_total", Counter, Count, ["name", "outcome"],
        "Approvals by flow (the [[approvals]] name) and outcome: opened, approved, rejected, expired (the deadline passed first: escalated, or decided by on_timeout).";
    /// Disagreements flagged.
    DISAGREEMENTS = "orderhub_disagreements_total", Counter, Count, ["kind"],
        "Orders flagged because systems contradict each other, by kind: shipped_without_pickup (WMS/ERP shipped, no courier collection by a shipped SLA's deadline), cancelled_but_shipped (the channel cancelled, the goods left), scan_without_shipment (a courier scan the WMS never shipped).";
    /// Stock ledger answers.
    STOCK_REQUESTS = "orderhub_stock_requests_total", Counter, Count, ["op", "result"],
        "Orders' requests to the stock ledger by op (reserve, release, commit, restock) and result (reserved, short: the order went on hold oversell, untracked: none of its SKUs has stock, done, nothing).";
    /// How late state changes reach the hub.
    STATE_CHANGE_DELAY = "orderhub_state_change_delay_seconds", Histogram, Seconds, ["source"],
        "For every transition, hub time minus the source's own time of the report that caused it, by reporting source (a configured source, its _api answers, operator or orderhub; any other name a canonical event carries counts as events). The share within 3 s is what order hubs hold to 99.6 %.";
    /// SLA breaches.
    SLA_BREACHES = "orderhub_sla_breaches_total", Counter, Count, ["rule", "late"],
        "SLA deadlines that passed while their timer was armed; late is true when the engine was down at the deadline.";
    /// Armed SLA timers.
    SLA_ARMED_TIMERS = "orderhub_sla_armed_timers", Gauge, Count, [],
        "SLA timers armed across all shards.";
    /// Orders past an SLA deadline, from the index.
    ORDERS_OVERDUE = "orderhub_orders_overdue", Gauge, Count, ["rule", "state"],
        "Orders still in an SLA rule's state past its deadline, by rule and that state (refreshed every 15 s from the order index; in cluster mode of the partitions this node holds).";
    /// Sync delivery attempts.
    DISPATCH_REQUESTS = "orderhub_dispatch_requests_total", Counter, Count, ["sink", "outcome"],
        "Sync delivery attempts by sink and outcome (delivered, throttled, failed, rejected).";
    /// The sink's quota.
    DISPATCH_QUOTA = "orderhub_dispatch_quota_per_second", Gauge, CountPerSecond, ["sink"],
        "Sends per second this node's rate limit for the sink allows: its configured quota, or in cluster mode this node's even share of it (quota / live nodes).";
    /// Sync delivery latency.
    DISPATCH_LATENCY = "orderhub_dispatch_latency_seconds", Histogram, Seconds, ["sink"],
        "Time one delivery attempt took, after the rate limiter let it go.";
    /// Sends that waited for the rate limiter.
    DISPATCH_THROTTLED_WAITS = "orderhub_dispatch_throttled_waits_total", Counter, Count, ["sink"],
        "Sends that waited for the sink's rate quota (work over the quota waits, never dropped).";
    /// Retries scheduled.
    DISPATCH_RETRIES = "orderhub_dispatch_retries_total", Counter, Count, ["sink"],
        "Failed or throttled attempts scheduled for another try.";
    /// Dead letters.
    DISPATCH_DEAD_LETTERS = "orderhub_dispatch_dead_letters_total", Counter, Count, ["sink"],
        "Syncs given up on: refused by the sink or out of retries (kept for replay).";
    /// Breaker state.
    DISPATCH_BREAKER_STATE = "orderhub_dispatch_breaker_state", Gauge, Count, ["sink"],
        "Circuit breaker of the sink: 0 closed, 1 half-open, 2 open.";
    /// Pending syncs.
    DISPATCH_BACKLOG = "orderhub_dispatch_backlog", Gauge, Count, ["sink"],
        "Syncs of the sink waiting to be delivered (on disk and in memory).";
    /// Syncs held back for another node.
    DISPATCH_DEFERRED = "orderhub_dispatch_deferred", Gauge, Count, ["sink"],
        "Syncs of the sink this node holds back because another node owns their order's partition (cluster mode): that node sends them; they leave here once it has, or are sent from here if the partition comes back. Not in orderhub_dispatch_backlog.";
    /// Oldest pending sync.
    DISPATCH_OLDEST = "orderhub_dispatch_oldest_seconds", Gauge, Seconds, ["sink"],
        "Age of the oldest sync of the sink that is waiting in memory.";
    /// Process CPU time (collected by metrics-process).
    PROCESS_CPU = "orderhub_process_cpu_seconds_total", Counter, Seconds, [],
        "User and system CPU time of the engine process, in whole seconds.";
    /// Resident memory.
    PROCESS_RESIDENT_MEMORY = "orderhub_process_resident_memory_bytes", Gauge, Bytes, [],
        "Resident memory of the engine process.";
    /// Virtual memory.
    PROCESS_VIRTUAL_MEMORY = "orderhub_process_virtual_memory_bytes", Gauge, Bytes, [],
        "Virtual memory of the engine process.";
    /// Address-space limit.
    PROCESS_VIRTUAL_MEMORY_MAX = "orderhub_process_virtual_memory_max_bytes", Gauge, Bytes, [],
        "Soft limit on the engine process's address space (0: unlimited).";
    /// Open file descriptors.
    PROCESS_OPEN_FDS = "orderhub_process_open_fds", Gauge, Count, [],
        "File descriptors the engine process holds open (sockets included).";
    /// File descriptor limit.
    PROCESS_MAX_FDS = "orderhub_process_max_fds", Gauge, Count, [],
        "Soft limit on open file descriptors (0: unlimited).";
    /// Threads.
    PROCESS_THREADS = "orderhub_process_threads", Gauge, Count, [],
        "Threads of the engine process.";
    /// Start time.
    PROCESS_START_TIME = "orderhub_process_start_time_seconds", Gauge, Seconds, [],
        "When the engine process started, in seconds since the Unix epoch.";
    /// Partitions of the cluster's event stream.
    CLUSTER_PARTITIONS = "orderhub_cluster_partitions", Gauge, Count, [],
        "Partitions of the cluster's event stream (cluster mode only).";
    /// Partitions this node owns.
    CLUSTER_PARTITIONS_OWNED = "orderhub_cluster_partitions_owned", Gauge, Count, [],
        "Partitions whose lease this node holds and applies (cluster mode only).";
    /// Live members.
    CLUSTER_MEMBERS = "orderhub_cluster_members", Gauge, Count, [],
        "Cluster members with a live heartbeat, as this node sees them (cluster mode only).";
    /// Lease moves.
    CLUSTER_LEASE_MOVES = "orderhub_cluster_lease_moves_total", Counter, Count, ["move"],
        "Partition leases this node acquired, released (to their rendezvous owner or at shutdown), lost (another node holds it), let expire (not renewed in time) or resumed (the applier of a partition still held restarted after a panic).";
    /// Publish latency.
    CLUSTER_PUBLISH_LATENCY = "orderhub_cluster_publish_seconds", Histogram, Seconds, [],
        "Time from publishing an ingest request's events to JetStream until every PubAck (a quorum holds them).";
    /// Partition snapshots.
    CLUSTER_SNAPSHOTS = "orderhub_cluster_snapshots_total", Counter, Count, ["outcome"],
        "Partition snapshots this node wrote to the orderhub_snapshots object store (written), rebuilt a partition it never held from (restored), or could not write or read (failed: a partition that cannot be restored is replayed from the stream).";
    /// Consumer lag.
    CLUSTER_CONSUMER_LAG = "orderhub_cluster_consumer_lag", Gauge, Count, [],
        "Events in this node's partitions not yet applied (from the stream consumers' pending counts).";
}

/// Registers help text and units for every catalogued metric with the installed recorder.
pub fn describe_all() {
    for def in CATALOGUE {
        match def.kind {
            MetricKind::Counter => describe_counter!(def.name, def.unit, def.help),
            MetricKind::Gauge => describe_gauge!(def.name, def.unit, def.help),
            MetricKind::Histogram => describe_histogram!(def.name, def.unit, def.help),
        }
    }
}

impl MetricKind {
    fn as_str(self) -> &'static str {
        match self {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
        }
    }
}

/// The catalogue as the Markdown document `dashboards/METRICS.md` (a test keeps the two equal).
pub fn catalogue_markdown() -> String {
    let mut out = String::from(
        "# orderhub metrics\n\n\
         Generated from the metric catalogue (`actors/src/telemetry.rs`); do not edit by hand. \
         `ORDERHUB_BLESS=1 cargo test -p orderhub-actors catalogue_document` rewrites it.\n\n\
         Every metric is registered at start-up, so each series is exported (as 0) before its \
         first event. Label values come from small fixed sets: configured source, sink and rule \
         names, canonical states and outcome names; never an order id. Histograms are exported \
         as `_bucket`, `_sum` and `_count` series.\n\n\
         | name | type | unit | labels | description |\n|---|---|---|---|---|\n",
    );
    for def in CATALOGUE {
        let labels = if def.labels.is_empty() {
            "—".to_owned()
        } else {
            def.labels
                .iter()
                .map(|l| format!("`{l}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        out.push_str(&format!(
            "| `{}` | {} | {} | {} | {} |\n",
            def.name,
            def.kind.as_str(),
            def.unit.as_str(),
            labels,
            def.help.replace('|', "\\|")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_document_matches_the_catalogue() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards/METRICS.md");
        let expected = catalogue_markdown();
        if std::env::var_os("ORDERHUB_BLESS").is_some() {
            std::fs::write(&path, &expected).unwrap();
        }
        let actual = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            actual == expected,
            "dashboards/METRICS.md disagrees with the metric catalogue; run \
             `ORDERHUB_BLESS=1 cargo test -p orderhub-actors catalogue_document` and commit it"
        );
    }

    #[test]
    fn names_follow_the_convention() {
        let mut seen = std::collections::HashSet::new();
        for def in CATALOGUE {
            assert!(def.name.starts_with("orderhub_"), "{}", def.name);
            assert!(seen.insert(def.name), "duplicate {}", def.name);
            let is_total = def.name.ends_with("_total");
            assert_eq!(is_total, def.kind == MetricKind::Counter, "{}", def.name);
            assert!(
                !def.labels
                    .iter()
                    .any(|l| l.contains("order") || *l == "key"),
                "{}",
                def.name
            );
        }
    }
}
