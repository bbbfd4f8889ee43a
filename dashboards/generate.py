#!/usr/bin/env python3
"""Writes orderhub's Grafana dashboards (dashboards/*.json) from the definitions below.

The JSON files are committed and provisioned as they are; edit the panels here and run
`python3 dashboards/generate.py` to rewrite them. Standard library only.

House rules, checked by the engine's observability tests on the JSON files:
- every panel has a unit and a description and queries the `${datasource}` variable;
- every rate() and increase() window is `$__rate_interval`;
- only metric names from the catalogue (dashboards/METRICS.md) are used;
- every query returns data from a live engine scraped by a real Prometheus.
"""

import json
import pathlib

HERE = pathlib.Path(__file__).resolve().parent
DS = {"type": "prometheus", "uid": "${datasource}"}
RI = "$__rate_interval"
# Ingest outcomes that are orderhub's own failures (the availability SLI's errors).
SERVER_ERRORS = "throttled|shutting_down|journal_error|source_unavailable"


def panel(title, description, unit, targets, kind="timeseries", w=12, h=8, **extra):
    """One panel; targets are (expr, legend) pairs or dicts with extra target fields."""
    built = []
    for i, target in enumerate(targets):
        if isinstance(target, tuple):
            target = {"expr": target[0], "legendFormat": target[1]}
        built.append({"refId": chr(ord("A") + i), "datasource": DS, "range": True, **target})
    defaults = {"unit": unit}
    defaults.update(extra.pop("defaults", {}))
    p = {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "targets": built,
        "_size": (w, h),
    }
    if kind == "timeseries":
        p["options"] = {
            "legend": {"displayMode": "table", "placement": "bottom", "calcs": ["mean", "max", "lastNotNull"]},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    elif kind == "stat":
        p["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}, "colorMode": "value", "graphMode": "area"}
    p.update(extra)
    return p


def dashboard(uid, title, description, panels):
    x = y = row_h = 0
    out = []
    for i, p in enumerate(panels, start=1):
        w, h = p.pop("_size")
        if x + w > 24:
            x, y, row_h = 0, y + row_h, 0
        p["id"] = i
        p["gridPos"] = {"h": h, "w": w, "x": x, "y": y}
        x += w
        row_h = max(row_h, h)
        out.append(p)
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["orderhub"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-6h", "to": "now"},
        "annotations": {"list": []},
        "links": [{"title": "orderhub dashboards", "type": "dashboards", "tags": ["orderhub"], "asDropdown": True}],
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Prometheus",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                    "refresh": 1,
                    "regex": "",
                    "options": [],
                }
            ]
        },
        "panels": out,
    }


FLASH_SALE = dashboard(
    "orderhub-flash-sale",
    "orderhub / Flash-sale overview",
    "What the channels are sending and whether orderhub takes it: the live-stream view.",
    [
        panel(
            "Ingest rate per channel",
            "Ingest requests per second by source (channel push endpoint), whatever their outcome.",
            "reqps",
            [(f"sum by (source) (rate(orderhub_ingest_requests_total[{RI}]))", "{{source}}")],
        ),
        panel(
            "Accepted vs rejected vs duplicate",
            "Ingest requests per second: accepted (journaled, 2xx), duplicate (redelivered, acknowledged, changed nothing) and rejected (any error answer: bad signature, replayed, malformed, too large, 429, 503, 500).",
            "reqps",
            [
                (f'sum(rate(orderhub_ingest_requests_total{{outcome="accepted"}}[{RI}]))', "accepted"),
                (f'sum(rate(orderhub_ingest_requests_total{{outcome="duplicate"}}[{RI}]))', "duplicate"),
                (f'sum(rate(orderhub_ingest_requests_total{{outcome!~"accepted|duplicate|verification"}}[{RI}]))', "rejected"),
            ],
        ),
        panel(
            "429s (backpressure)",
            "Requests answered 429 Too Many Requests per second by source: the journal queue or the applied-event backlog is full. Senders retry; nothing accepted is lost.",
            "reqps",
            [(f'sum by (source) (rate(orderhub_ingest_requests_total{{outcome="throttled"}}[{RI}]))', "{{source}}")],
        ),
        panel(
            "Rejections by reason",
            "Error answers per second by reason and source, so a rotated secret (bad_signature) or a changed payload (malformed) shows at once.",
            "reqps",
            [(f'sum by (source, outcome) (rate(orderhub_ingest_requests_total{{outcome!~"accepted|duplicate|verification"}}[{RI}]))', "{{source}} {{outcome}}")],
        ),
        panel(
            "Unmapped statuses and rejected messages",
            "Events per second journaled with a status their source's mapping does not know (recorded and acknowledged, no state change: GET /v1/sources lists the raw values), and malformed messages of otherwise good batches (recorded, the others taken).",
            "reqps",
            [
                (f'sum by (source) (rate(orderhub_ingest_unmapped_total[{RI}]))', "{{source}} unmapped"),
                (f'sum by (source) (rate(orderhub_ingest_events_total{{outcome="rejected"}}[{RI}]))', "{{source}} rejected"),
            ],
        ),
        panel(
            "Channel connections",
            "Connection-based channels (Pinduoduo message service, Taobao TMC): 1 while the engine's connection is up. Down means their messages wait on the platform (nothing is lost; the platform redelivers).",
            "none",
            [("max by (source) (orderhub_channel_connected)", "{{source}}")],
            defaults={
                "min": 0,
                "max": 1,
                "mappings": [{"type": "value", "options": {"0": {"text": "down", "color": "red"}, "1": {"text": "up", "color": "green"}}}],
                "custom": {"drawStyle": "line", "lineInterpolation": "stepAfter"},
            },
        ),
        panel(
            "Channel reconnects",
            "Times a connection-based channel's connection ended or failed and was retried (exponential backoff, 1 s to 60 s), per interval.",
            "short",
            [(f"sum by (source) (increase(orderhub_channel_reconnects_total[{RI}]))", "{{source}}")],
            defaults={"custom": {"drawStyle": "bars", "fillOpacity": 60}},
        ),
        panel(
            "Orders per canonical state",
            "Orders currently in each canonical state (all orders ever seen, passivated ones included).",
            "short",
            [("sum by (state) (orderhub_orders_by_state)", "{{state}}")],
            defaults={"custom": {"stacking": {"mode": "normal", "group": "A"}, "fillOpacity": 40}},
        ),
        panel(
            "Order inflow by channel and hour",
            "New events journaled per channel in each hour: when each channel's sale peaks. Rows are channels, columns hours, colour the count.",
            "short",
            [{"expr": f'sum by (source) (increase(orderhub_ingest_events_total{{outcome="appended"}}[{RI}]))', "legendFormat": "{{source}}", "interval": "1h"}],
            kind="heatmap",
            options={
                "calculate": False,
                "yAxis": {"axisPlacement": "left"},
                "rowsFrame": {"layout": "auto"},
                "color": {"mode": "scheme", "scheme": "Oranges", "steps": 64},
                "cellGap": 1,
                "legend": {"show": True},
                "tooltip": {"show": True, "yHistogram": False},
            },
        ),
        panel(
            "p99 ack latency",
            "99th percentile of the time from receiving an ingest request to answering it, by source. Includes the journal fsync: a 2xx means durable.",
            "s",
            [(f"histogram_quantile(0.99, sum by (le, source) (rate(orderhub_ingest_latency_seconds_bucket[{RI}])))", "{{source}}")],
        ),
        panel(
            "Ingest availability",
            "Share of ingest requests not failed by orderhub itself (429, 503, journal errors). Bad input from senders does not count. SLO: 99.9 %.",
            "percentunit",
            [(f'1 - (sum(rate(orderhub_ingest_requests_total{{outcome=~"{SERVER_ERRORS}"}}[{RI}])) / sum(rate(orderhub_ingest_requests_total[{RI}])))', "availability")],
            kind="stat",
            w=6,
            defaults={"decimals": 3, "thresholds": {"mode": "absolute", "steps": [{"color": "red", "value": None}, {"color": "orange", "value": 0.99}, {"color": "green", "value": 0.999}]}},
        ),
        panel(
            "Events journaled per second",
            "Events durably appended to the journal per second (duplicates excluded).",
            "ops",
            [(f"sum(rate(orderhub_journal_appended_events_total[{RI}]))", "appended")],
            kind="stat",
            w=6,
        ),
    ],
)

FULFILMENT = dashboard(
    "orderhub-fulfilment",
    "orderhub / Fulfilment health",
    "Where orders are stuck, which SLAs are missed and where the systems disagree: the operations view.",
    [
        panel(
            "Shipped without courier pickup",
            "Orders still in shipped past their SLA (pickup_within_24h by default): marked shipped by the ERP/WMS with no courier pickup reported.",
            "short",
            [('sum(orderhub_orders_overdue{state="shipped"})', "shipped, no pickup")],
            kind="stat",
            w=6,
            defaults={"thresholds": {"mode": "absolute", "steps": [{"color": "green", "value": None}, {"color": "red", "value": 1}]}},
        ),
        panel(
            "State changes within 3 s",
            "Share of transitions whose report reached orderhub within 3 s of the source's own time (orderhub_state_change_delay_seconds). Order hubs hold this to 99.6 %: below it, what the floor sees lags what happened.",
            "percentunit",
            [(f'sum(rate(orderhub_state_change_delay_seconds_bucket{{le="3"}}[{RI}])) / sum(rate(orderhub_state_change_delay_seconds_count[{RI}]))', "within 3 s")],
            kind="stat",
            w=6,
            defaults={"decimals": 2, "thresholds": {"mode": "absolute", "steps": [{"color": "red", "value": None}, {"color": "orange", "value": 0.99}, {"color": "green", "value": 0.996}]}},
        ),
        panel(
            "Paid but not allocated",
            "Orders still in paid past their SLA (allocate_within_2h by default): the warehouse has not allocated them.",
            "short",
            [('sum(orderhub_orders_overdue{state="paid"})', "paid, not allocated")],
            kind="stat",
            w=6,
            defaults={"thresholds": {"mode": "absolute", "steps": [{"color": "green", "value": None}, {"color": "orange", "value": 1}]}},
        ),
        panel(
            "On hold now",
            "Orders currently held by an exception-interception rule, waiting for a person.",
            "short",
            [('sum(orderhub_orders_by_state{state="on_hold"})', "on hold")],
            kind="stat",
            w=6,
            defaults={"thresholds": {"mode": "absolute", "steps": [{"color": "green", "value": None}, {"color": "orange", "value": 1}]}},
        ),
        panel(
            "Armed SLA timers",
            "SLA deadlines currently being watched across all orders.",
            "short",
            [("sum(orderhub_sla_armed_timers)", "armed")],
            kind="stat",
            w=6,
        ),
        panel(
            "Stuck orders by state over their SLA",
            "Orders still in an SLA rule's state past its deadline, by state and rule (counted every 15 s from the order index). List them with GET /v1/orders?state=STATE&sla=breached.",
            "short",
            [("sum by (state, rule) (orderhub_orders_overdue)", "{{state}} ({{rule}})")],
        ),
        panel(
            "SLA breaches by rule",
            "SLA deadlines that passed while armed, per rule, per interval; late=true ones were detected after an engine outage.",
            "short",
            [(f"sum by (rule, late) (increase(orderhub_sla_breaches_total[{RI}]))", "{{rule}} late={{late}}")],
            defaults={"custom": {"drawStyle": "bars", "fillOpacity": 60}},
        ),
        panel(
            "Cross-system disagreement",
            "Reports that did not move the order because another system already reported a later or contradicting state: stale (late, out of order), conflict (e.g. shipped after cancelled), not_allowed (a source reporting a state it may not cause). Each stays in the order's timeline.",
            "ops",
            [(f'sum by (outcome) (rate(orderhub_orders_event_outcomes_total{{outcome=~"stale|conflict|not_allowed"}}[{RI}]))', "{{outcome}}")],
        ),
        panel(
            "Holds by rule",
            "Orders put on hold per rule per interval (exception interception); each is also logged as a warning.",
            "short",
            [(f"sum by (rule) (increase(orderhub_orders_holds_total[{RI}]))", "{{rule}}")],
            defaults={"custom": {"drawStyle": "bars", "fillOpacity": 60}},
        ),
        panel(
            "Transitions per second by target state",
            "Canonical state transitions per second by the state entered: the pipeline's flow, stage by stage.",
            "ops",
            [(f"sum by (to) (rate(orderhub_orders_transitions_total[{RI}]))", "{{to}}")],
            w=24,
        ),
    ],
)

DISPATCH = dashboard(
    "orderhub-dispatch",
    "orderhub / Dispatch",
    "Syncs to ERP, WMS, courier, finance and notification sinks: rate against quota, failures, backlog.",
    [
        panel(
            "Send rate vs quota",
            "Delivery attempts per second by sink (solid) against the sink's configured rate limit (dashed). At the quota, work waits; it is never dropped.",
            "reqps",
            [
                (f"sum by (sink) (rate(orderhub_dispatch_requests_total[{RI}]))", "{{sink}} sent"),
                ("max by (sink) (orderhub_dispatch_quota_per_second)", "{{sink}} quota"),
            ],
            fieldConfig_overrides=True,
        ),
        panel(
            "Attempts by outcome",
            "Delivery attempts per second by sink and outcome: delivered, throttled (429), failed (5xx, timeout, connection), rejected (refused for good, dead-lettered).",
            "reqps",
            [(f"sum by (sink, outcome) (rate(orderhub_dispatch_requests_total[{RI}]))", "{{sink}} {{outcome}}")],
        ),
        panel(
            "Delivery latency p99",
            "99th percentile of one delivery attempt by sink, after the rate limiter let it go.",
            "s",
            [(f"histogram_quantile(0.99, sum by (le, sink) (rate(orderhub_dispatch_latency_seconds_bucket[{RI}])))", "{{sink}}")],
        ),
        panel(
            "Retries",
            "Failed or throttled attempts scheduled for another try, per second by sink (exponential backoff with jitter, honouring Retry-After).",
            "ops",
            [(f"sum by (sink) (rate(orderhub_dispatch_retries_total[{RI}]))", "{{sink}}")],
        ),
        panel(
            "Throttled waits",
            "Sends per second that waited for the sink's rate quota: which sink is the bottleneck.",
            "ops",
            [(f"sum by (sink) (rate(orderhub_dispatch_throttled_waits_total[{RI}]))", "{{sink}}")],
        ),
        panel(
            "Breaker state",
            "Circuit breaker per sink: 0 closed (sending), 1 half-open (one probe), 2 open (waiting for the cool-down).",
            "none",
            [("max by (sink) (orderhub_dispatch_breaker_state)", "{{sink}}")],
            defaults={
                "min": 0,
                "max": 2,
                "mappings": [{"type": "value", "options": {"0": {"text": "closed", "color": "green"}, "1": {"text": "half-open", "color": "orange"}, "2": {"text": "open", "color": "red"}}}],
                "custom": {"drawStyle": "line", "lineInterpolation": "stepAfter"},
            },
        ),
        panel(
            "Backlog depth",
            "Syncs per sink waiting to be delivered (on disk and in memory).",
            "short",
            [("sum by (sink) (orderhub_dispatch_backlog)", "{{sink}}")],
        ),
        panel(
            "Oldest pending sync",
            "Age of the oldest sync per sink still waiting: how far the sink is behind the channels.",
            "s",
            [("max by (sink) (orderhub_dispatch_oldest_seconds)", "{{sink}}")],
        ),
        panel(
            "Dead letters",
            "Syncs given up on per interval by sink: refused by the sink or out of retries. They wait in GET /v1/dispatch/dead-letters for replay.",
            "short",
            [(f"sum by (sink) (increase(orderhub_dispatch_dead_letters_total[{RI}]))", "{{sink}}")],
            w=24,
            defaults={"custom": {"drawStyle": "bars", "fillOpacity": 60}},
        ),
    ],
)

ENGINE = dashboard(
    "orderhub-engine",
    "orderhub / Engine internals",
    "Utilisation, saturation and errors of orderhub's own parts: actors, journal, process.",
    [
        panel(
            "Active order actors",
            "Order actors in memory; idle ones are passivated (their state is on disk).",
            "short",
            [("sum(orderhub_actors_active)", "active")],
        ),
        panel(
            "Actor starts and passivations",
            "Order actors started (first event, timer, reactivation) and passivated (idle, capacity, shutdown) per second.",
            "ops",
            [
                (f"sum(rate(orderhub_actors_spawned_total[{RI}]))", "started"),
                (f"sum by (reason) (rate(orderhub_actors_passivated_total[{RI}]))", "passivated {{reason}}"),
            ],
        ),
        panel(
            "Mailbox depth (events not yet applied)",
            "Journaled events routed to the shards and not yet applied by their order actor: the actors' queue. Beyond journal.max_pending_events ingest answers 429.",
            "short",
            [("sum(orderhub_actors_pending_events)", "pending events")],
        ),
        panel(
            "Journal queue depth",
            "Append requests waiting for the journal writer (beyond journal.queue_capacity ingest answers 429), and index updates waiting.",
            "short",
            [
                ("sum(orderhub_journal_queue_depth)", "appends waiting"),
                ("sum(orderhub_journal_index_backlog)", "index updates waiting"),
            ],
        ),
        panel(
            "Journal queue oldest",
            "Age of the oldest append request waiting for the journal writer.",
            "s",
            [("max(orderhub_journal_queue_oldest_seconds)", "oldest")],
        ),
        panel(
            "Journal commit latency",
            "Time to write and fsync one group commit (p50, p99). Every ingest answer waits for its commit.",
            "s",
            [
                (f"histogram_quantile(0.5, sum by (le) (rate(orderhub_journal_commit_seconds_bucket[{RI}])))", "p50"),
                (f"histogram_quantile(0.99, sum by (le) (rate(orderhub_journal_commit_seconds_bucket[{RI}])))", "p99"),
            ],
        ),
        panel(
            "Journal batch size",
            "Events per group commit: mean and p99. Larger batches under load are group commit doing its job.",
            "short",
            [
                (f"sum(rate(orderhub_journal_batch_events_sum[{RI}])) / sum(rate(orderhub_journal_batch_events_count[{RI}]))", "mean"),
                (f"histogram_quantile(0.99, sum by (le) (rate(orderhub_journal_batch_events_bucket[{RI}])))", "p99"),
            ],
        ),
        panel(
            "Disk: journal and free space",
            "The journal's bytes on disk (database and WAL) and the space left on the data directory's file system. OrderhubDataDirFullIn24h fires when, at the last 6 hours' rate, free space runs out within a day.",
            "bytes",
            [
                ("sum by (instance) (orderhub_journal_disk_bytes)", "{{instance}} journal"),
                ("min by (instance) (orderhub_data_dir_free_bytes)", "{{instance}} free"),
            ],
        ),
        panel(
            "Retention: archived orders and oldest event",
            "Finished orders compaction archived and removed per interval (bars), failed compaction passes, and the age of the oldest event still in the journal (right axis): about journal.retain plus the longest-open order when compaction keeps up.",
            "short",
            [
                (f"sum(increase(orderhub_journal_archived_orders_total[{RI}]))", "archived orders"),
                (f'sum(increase(orderhub_journal_compactions_total{{outcome="failed"}}[{RI}]))', "failed passes"),
                ("max(orderhub_journal_oldest_event_age_seconds) / 86400", "oldest event (days)"),
            ],
            defaults={"custom": {"drawStyle": "bars", "fillOpacity": 60}},
        ),
        panel(
            "Actor restarts and failures",
            "Order actors restarted from the journal after a crash, and those that could not start or crash-looped, per interval.",
            "short",
            [
                (f"sum(increase(orderhub_actors_restarts_total[{RI}]))", "restarts"),
                (f"sum by (kind) (increase(orderhub_actors_failures_total[{RI}]))", "failures {{kind}}"),
                (f"sum by (kind) (increase(orderhub_journal_errors_total[{RI}]))", "journal errors {{kind}}"),
            ],
            defaults={"custom": {"drawStyle": "bars", "fillOpacity": 60}},
        ),
        panel(
            "Orders left unfolded",
            "Orders whose actor was given up on (could not start, kept crashing, or failed to fold at start-up) and that no summary has folded since: their rows in order lists are behind their events or missing. Should be 0.",
            "short",
            [("sum(orderhub_journal_unfolded_orders)", "unfolded orders")],
        ),
        panel(
            "Poller cursor age",
            "How far behind now each poller's cursor is: every change before it has been read. It grows while a window keeps failing or holds an unknown status.",
            "s",
            [("max by (source) (orderhub_poll_cursor_age_seconds)", "{{source}}")],
        ),
        panel(
            "Polled orders",
            "Orders pollers saw per interval: journaled (news to orderhub: a push was missed), known (a push already told us), refused (status not in the table), and failed windows.",
            "short",
            [
                (f"sum by (source, outcome) (increase(orderhub_poll_items_total[{RI}]))", "{{source}} {{outcome}}"),
                (f'sum by (source) (increase(orderhub_poll_runs_total{{outcome="failed"}}[{RI}]))', "{{source}} failed windows"),
            ],
            defaults={"custom": {"drawStyle": "bars", "fillOpacity": 60}},
        ),
        panel(
            "Order details",
            "Order-detail API calls per interval by channel and outcome (fetched, throttled by the platform, failed and retried, token_expired and renewed, credentials refused, order refused, malformed answer) and token renewals. The queue of fetches is the {channel}_api sink on the dispatch dashboard.",
            "short",
            [
                (f"sum by (channel, outcome) (increase(orderhub_details_fetches_total[{RI}]))", "{{channel}} {{outcome}}"),
                (f"sum by (channel, outcome) (increase(orderhub_details_token_renewals_total[{RI}]))", "{{channel}} token {{outcome}}"),
            ],
            defaults={"custom": {"drawStyle": "bars", "fillOpacity": 60}},
        ),
        panel(
            "Order details available",
            "1 while a channel's order-detail enrichment has its credentials; 0 when one is missing or the platform refused them (its orders then carry only what pushes say; alert OrderhubOrderDetailsUnavailable).",
            "short",
            [("min by (channel) (orderhub_details_available)", "{{channel}}")],
        ),
        panel(
            "Process CPU",
            "CPU time used per second by the engine process (1 = one core busy).",
            "percentunit",
            [(f"sum(rate(orderhub_process_cpu_seconds_total[{RI}]))", "cpu")],
        ),
        panel(
            "Process memory",
            "Resident and virtual memory of the engine process.",
            "bytes",
            [
                ("sum(orderhub_process_resident_memory_bytes)", "resident"),
                ("sum(orderhub_process_virtual_memory_bytes)", "virtual"),
            ],
        ),
        panel(
            "Threads and file descriptors",
            "Threads and open file descriptors (sockets included) of the engine process, against the descriptor limit.",
            "short",
            [
                ("sum(orderhub_process_threads)", "threads"),
                ("sum(orderhub_process_open_fds)", "open fds"),
                ("max(orderhub_process_max_fds)", "fd limit"),
            ],
            w=24,
        ),
        panel(
            "Cluster partitions",
            "Cluster mode: partitions each node owns and applies, against the stream's partitions (0 on a single node). A gap that lasts is OrderhubClusterPartitionsUnowned.",
            "short",
            [
                ("sum by (instance) (orderhub_cluster_partitions_owned)", "{{instance}} owned"),
                ("max(orderhub_cluster_partitions)", "partitions"),
                ("max(orderhub_cluster_members)", "live members"),
            ],
        ),
        panel(
            "Cluster lease moves",
            "Partition leases acquired, released, lost to another node or let expire, per second.",
            "ops",
            [(f"sum by (move) (rate(orderhub_cluster_lease_moves_total[{RI}]))", "{{move}}")],
        ),
        panel(
            "Cluster publish latency",
            "Time from publishing an ingest request's events to JetStream until every PubAck: what a channel's 2xx waits for in cluster mode.",
            "s",
            [
                (f"histogram_quantile(0.5, sum by (le) (rate(orderhub_cluster_publish_seconds_bucket[{RI}])))", "p50"),
                (f"histogram_quantile(0.99, sum by (le) (rate(orderhub_cluster_publish_seconds_bucket[{RI}])))", "p99"),
            ],
        ),
        panel(
            "Cluster consumer lag",
            "Acknowledged events of each node's partitions not yet applied.",
            "short",
            [("max by (instance) (orderhub_cluster_consumer_lag)", "{{instance}}")],
        ),
    ],
)


def write(name, board):
    # The quota series of the rate-vs-quota panel are drawn dashed.
    for p in board["panels"]:
        if p.pop("fieldConfig_overrides", False):
            p["fieldConfig"]["overrides"].append(
                {
                    "matcher": {"id": "byRegexp", "options": ".* quota"},
                    "properties": [{"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}}],
                }
            )
    (HERE / name).write_text(json.dumps(board, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    write("orderhub-flash-sale.json", FLASH_SALE)
    write("orderhub-fulfilment.json", FULFILMENT)
    write("orderhub-dispatch.json", DISPATCH)
    write("orderhub-engine.json", ENGINE)
