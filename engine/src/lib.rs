//! # orderhub-engine — the engine around the order brain
//!
//! In orderhub's data flow (DESIGN.md §1) this crate is everything but the actors: it takes
//! channel pushes over HTTP, verifies, decodes and maps them ([`ingest`]), journals them
//! durably before acknowledging ([`journal`]), hands them to the sharded order actors of
//! `orderhub-actors`, answers queries ([`api`]) and exports metrics ([`telemetry`]).
//!
//! Modules:
//! - [`config`] — configuration, embedded default, layering and validation;
//! - [`ingest`] — the ingest pipeline and one adapter per source;
//! - [`secrets`], `signing`, [`http_client`], `envelope` — plumbing shared by ingest, sinks and
//!   the API (secrets from the environment, signatures, the outbound HTTP client, the JSON error
//!   body), so that no lower layer imports ingest;
//! - [`journal`] — the SQLite journal, group-commit writer, order index and recovery;
//! - [`sinks`] — one connector per sink protocol, driven by the dispatcher actors;
//! - [`api`] — query and operations endpoints;
//! - [`telemetry`] — Prometheus recorder and logging.
//!
//! The binary only parses arguments and calls [`run`].
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod api;
pub(crate) mod auth;
mod board;
pub mod cluster;
pub mod config;
pub(crate) mod envelope;
pub mod http_client;
pub mod ingest;
pub mod journal;
pub mod secrets;
pub(crate) mod signing;
pub mod sinks;
pub mod telemetry;

use axum::Router;
use axum::routing::{get, post};
use config::Config;
use ingest::{IngestMetrics, SourceRegistry};
use journal::Journal;
use metrics_exporter_prometheus::PrometheusHandle;
use orderhub_actors::dispatch::{Dispatch, DispatchError};
use orderhub_actors::order::{Millis, OrderPolicy};
use orderhub_actors::shard::{Clock, OrderRouter, RouterError, SystemClock};
use orderhub_actors::telemetry as t;
pub use secrets::{SecretLookup, env_secrets};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// Why the engine could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The journal failed.
    #[error(transparent)]
    Journal(#[from] journal::JournalError),
    /// The order actors failed to start.
    #[error(transparent)]
    Router(#[from] RouterError),
    /// A sink could not be set up.
    #[error(transparent)]
    Sink(#[from] sinks::SinkError),
    /// The dispatchers failed to start.
    #[error(transparent)]
    Dispatch(#[from] DispatchError),
    /// The node could not join its cluster.
    #[error(transparent)]
    Cluster(#[from] cluster::ClusterError),
    /// The HTTP server failed.
    #[error("http server: {0}")]
    Http(#[from] std::io::Error),
}

/// Shared state of the HTTP handlers.
pub(crate) struct AppState {
    pub(crate) config: Config,
    pub(crate) policy: Arc<OrderPolicy>,
    pub(crate) journal: Journal,
    /// Cluster mode: where ingest publishes (else the journal).
    pub(crate) cluster: Option<cluster::Cluster>,
    pub(crate) router: OrderRouter,
    pub(crate) dispatch: Dispatch,
    pub(crate) sources: SourceRegistry,
    /// The connected and polled sources' names.
    pub(crate) connected: Vec<&'static str>,
    /// Each enriched channel's signed API behind its quota (detail fetches and pollers).
    pub(crate) channel_apis: std::collections::BTreeMap<&'static str, ingest::details::ChannelApi>,
    pub(crate) ingest_metrics: IngestMetrics,
    pub(crate) rejections: ingest::rejections::Rejections,
    pub(crate) operators: auth::Operators,
    /// Approvals being decided (one decision at a time per approval).
    pub(crate) deciding: api::approvals::Deciding,
    /// The ops board's latest snapshot.
    pub(crate) board: board::Board,
    pub(crate) prometheus: PrometheusHandle,
    pub(crate) clock: SystemClock,
    ready: AtomicBool,
}

impl AppState {
    pub(crate) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && self.cluster.as_ref().is_none_or(|c| c.joined())
    }

    /// Appends accepted events to the log: the journal on a single node, the stream in
    /// cluster mode; answers once they are durable.
    pub(crate) async fn append(
        &self,
        events: Vec<orderhub_actors::order::OrderEvent>,
    ) -> Result<Vec<journal::AppendOutcome>, journal::JournalError> {
        match &self.cluster {
            Some(cluster) => cluster.append(events).await,
            None => self.journal.append(events).await,
        }
    }

    pub(crate) fn now_ms(&self) -> Millis {
        self.clock.now_ms()
    }
}

/// How many connections may wait in the kernel to be accepted (the kernel caps it at
/// `net.core.somaxconn`, 4096 by default since Linux 5.4). The standard library and tokio
/// listen with 128: a flash sale's burst of new webhook connections overflows that while the
/// server is busy, and the kernel drops each SYN that does not fit, which the client resends
/// only after a second (BENCHMARKS.md, "the spike's one-second tail").
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds `addr` for the engine's HTTP server with a backlog of [`LISTEN_BACKLOG`]. Call it
/// within a Tokio runtime: the listener registers with the runtime's reactor.
pub fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As `TcpListener::bind` does: a restarted engine binds while the old one's connections
    // are still in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Runs the engine on `listener` until `shutdown` completes, then drains: readiness fails,
/// ingest stops accepting, in-flight requests finish, the actors write their summaries and the
/// journal commits what is queued — all within `server.shutdown_grace`, which is logged when
/// exceeded.
pub async fn run(
    config: Config,
    listener: TcpListener,
    secrets: SecretLookup,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), EngineError> {
    let started = Instant::now();
    // Every source's table is checked before anything is opened.
    let mut configured = ingest::Sources::configure(&config)?;
    http_client::install_tls_provider();
    let prometheus = telemetry::install();
    let clock = SystemClock;
    // Order details: a channel whose credentials are missing runs without (and says so).
    let enrichment = ingest::details::Enrichment::build(
        configured.take_details(),
        &secrets,
        &config.server.data_dir,
    );
    let policy = enrichment.policy(config.policy()).with_metric_sources(
        configured
            .names()
            .chain(enrichment.sources())
            .chain([
                orderhub_actors::order::OPERATOR_SOURCE,
                orderhub_actors::order::INTERNAL_SOURCE,
            ])
            .map(str::to_owned),
    );
    let data_dir = config.server.data_dir.clone();
    let journal_config = config.journal.clone();
    let recovery_policy = policy.clone();
    let (journal, recovered, _lock) = tokio::task::spawn_blocking(move || {
        let lock = journal::DataDirLock::acquire(&data_dir, "orderhub serve")?;
        Journal::open(&data_dir, &journal_config, &recovery_policy)
            .map(|(journal, recovered)| (journal, recovered, lock))
    })
    .await
    .map_err(|e| std::io::Error::other(e.to_string()))??;
    cluster::register_metrics();
    let cluster = match &config.cluster {
        Some(cluster_config) => {
            Some(cluster::Cluster::join_patiently(cluster_config, &journal).await?)
        }
        None => None,
    };
    let store: Arc<dyn orderhub_actors::store::OrderStore> = match &cluster {
        Some(cluster) => cluster.order_store(),
        None => Arc::new(journal.clone()),
    };
    let router = OrderRouter::start(
        config.shard_config(),
        policy.clone(),
        store,
        Arc::new(clock),
    )
    .await?;
    router.set_orders_by_state(&recovered.by_state);
    for (order, rule, deadline) in &recovered.armed {
        router.arm(order, rule, *deadline);
    }
    for (rule, sink) in config.inactive_rules() {
        tracing::info!(rule = %rule, sink = %sink, "default rule inactive: its sink is not configured");
    }
    let mut sinks = Vec::with_capacity(config.sinks.len());
    for (sink, spec) in config.sinks.iter().zip(config.sink_specs()) {
        let connector = sinks::connector(sink, &secrets)?;
        let connector = match &cluster {
            Some(cluster) => cluster.remembering(connector),
            None => connector,
        };
        sinks.push((spec, connector));
    }
    // Order details: one more sink per enriched channel. In cluster mode its fetches are
    // decided by the partition owner's fold like every sync, its quota is shared like a sink's,
    // and a new owner skips a fetch another node already answered.
    let answering = ingest::details::LateApp::default();
    for (spec, connector) in enrichment.sinks(&answering) {
        let connector = match &cluster {
            Some(cluster) => cluster.remembering(connector),
            None => connector,
        };
        sinks.push((spec, connector));
    }
    // Orders on hold keep their syncs back until released: the actors mark them as they fold;
    // those held before this start are marked from the index (their actors may not run).
    let held = router.held_orders();
    let (held_index, held_policy) = (journal.clone(), policy.clone());
    let on_hold =
        tokio::task::spawn_blocking(move || held_in_index(&held_index, &held_policy, |_| true))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))??;
    for (order, sinks) in &on_hold {
        held.hold(order, sinks.as_deref());
    }
    let dispatch =
        Dispatch::start_with_holds(sinks, Arc::new(journal.clone()), Arc::new(clock), held).await?;
    // Cluster mode: each live node dispatches its own partitions' syncs with an even share of
    // every sink's quota, so together they never exceed it; the share follows the members.
    let quota_share = cluster.as_ref().map(|cluster| {
        let mut members = cluster.members();
        let dispatch = dispatch.clone();
        dispatch.share_quota(members.borrow_and_update().len().max(1) as u32);
        tokio::spawn(async move {
            while members.changed().await.is_ok() {
                let nodes = members.borrow_and_update().len().max(1);
                tracing::info!(
                    nodes,
                    "live nodes changed: each takes 1/{nodes} of every sink's quota"
                );
                dispatch.share_quota(nodes as u32);
            }
        })
    });
    let routing = router.clone();
    let notifying = dispatch.clone();
    journal.start(
        move |event, first| {
            let routed = if first {
                routing.route_first(event)
            } else {
                routing.route(event)
            };
            if let Err(err) = routed {
                // The event is journaled; it is folded in when its order next loads or at restart.
                tracing::warn!(error = %err, "could not route a journaled event");
            }
        },
        move |syncs| notifying.notify(syncs),
    )?;
    // Cluster mode: heartbeats, leases and the appliers of this node's partitions. A partition
    // taken (back) gets the SLA timers its orders have in this node's index re-armed: one that
    // fired while the node did not hold it raised nothing, and orders with no event since are
    // not replayed.
    let membership = cluster.as_ref().map(|cluster| {
        let (journal, router, placing) = (journal.clone(), router.clone(), cluster.clone());
        let policy = Arc::new(policy.clone());
        cluster.on_partitions_taken(move |taken| {
            let (journal, router, placing) = (journal.clone(), router.clone(), placing.clone());
            let policy = policy.clone();
            let index = journal.clone();
            tokio::spawn(async move {
                let armed = tokio::task::spawn_blocking(move || journal.armed_timers()).await;
                let armed = match armed {
                    Ok(Ok(armed)) => armed,
                    Ok(Err(err)) => return tracing::warn!(error = %err, "cannot re-arm the SLA timers of taken partitions"),
                    Err(err) => return tracing::warn!(error = %err, "cannot re-arm the SLA timers of taken partitions"),
                };
                for (order, rule, deadline) in armed {
                    if taken.contains(&placing.partition_of(&order)) {
                        router.arm(&order, &rule, deadline);
                    }
                }
                // And their orders on hold keep their syncs back here too.
                let held = router.held_orders();
                let on_hold = tokio::task::spawn_blocking(move || {
                    held_in_index(&index, &policy, |key| {
                        taken.contains(&placing.partition_of(key))
                    })
                })
                .await;
                match on_hold {
                    Ok(Ok(orders)) => {
                        for (order, sinks) in orders {
                            held.hold(&order, sinks.as_deref());
                        }
                    }
                    Ok(Err(err)) => tracing::warn!(error = %err, "cannot mark the held orders of taken partitions"),
                    Err(err) => tracing::warn!(error = %err, "cannot mark the held orders of taken partitions"),
                }
            });
        });
        cluster.start()
    });

    let sources = SourceRegistry::build(&configured, &secrets);
    let ingest_metrics = IngestMetrics::new(configured.names().chain(enrichment.sources()));
    let connected: Vec<&'static str> = configured.tasks().map(|(name, _)| name).collect();
    let grace = config.server.shutdown_grace.0;
    let config_lease_ttl = config
        .cluster
        .as_ref()
        .map_or(Duration::ZERO, |cluster| cluster.lease_ttl.0);
    let operators = auth::Operators::new(&config.operators, &secrets);
    let (board_view, board_publisher) = board::Board::channel();
    let state = Arc::new(AppState {
        config,
        policy: Arc::new(policy),
        journal: journal.clone(),
        cluster: cluster.clone(),
        router: router.clone(),
        dispatch: dispatch.clone(),
        sources,
        connected,
        channel_apis: enrichment.apis(),
        ingest_metrics,
        rejections: Default::default(),
        operators,
        deciding: Default::default(),
        board: board_view,
        prometheus: prometheus.clone(),
        clock,
        ready: AtomicBool::new(true),
    });
    answering.bind(&state);
    board_publisher.start(Arc::downgrade(&state));
    let upkeep = tokio::spawn(
        telemetry::Upkeep::new(
            prometheus,
            journal.clone(),
            state.policy.sla_rules().to_vec(),
            state.config.server.data_dir.clone(),
            cluster.clone().map(|cluster| (cluster, router.clone())),
        )
        .run(),
    );
    let compaction = Compaction::start(&state);
    tracing::info!(
        addr = %listener.local_addr()?,
        orders_refolded = recovered.orders_refolded,
        orders_unfolded = recovered.unfolded.len(),
        syncs_recovered = recovered.syncs_recovered,
        sync_backlog = dispatch.backlog(),
        timers_rearmed = recovered.armed.len(),
        last_seq = recovered.last_seq,
        startup_ms = started.elapsed().as_millis() as u64,
        "orderhub ready"
    );

    // Cluster mode: other nodes' reads of orders this node owns, and their lists, come over
    // NATS request/reply.
    let rpc = cluster.as_ref().map(|cluster| {
        let app = state.clone();
        let handler: cluster::rpc::Handler = Arc::new(move |call| {
            let app = app.clone();
            Box::pin(async move { api::answer(&app, call).await })
        });
        tokio::spawn(cluster.clone().serve(handler))
    });
    let channels = ingest::Channels::start(&configured, &state, &secrets);
    let app = routes(state.clone());
    let signalled = Arc::new(tokio::sync::Notify::new());
    let stop_by = Arc::new(std::sync::OnceLock::new());
    let on_signal = {
        let state = state.clone();
        let signalled = signalled.clone();
        let stop_by = stop_by.clone();
        async move {
            shutdown.await;
            let _ = stop_by.set(tokio::time::Instant::now() + grace);
            tracing::info!(
                grace_s = grace.as_secs_f64(),
                "shutdown requested: no longer ready, draining"
            );
            state.ready.store(false, Ordering::Release);
            signalled.notify_one();
        }
    };
    let server = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(on_signal);
    // Open requests get two thirds of the grace; the rest is for the steps after them.
    let drained = async {
        signalled.notified().await;
        tokio::time::sleep(grace * 2 / 3).await;
    };
    tokio::select! {
        served = server => served?,
        () = drained => tracing::warn!(step = "ingest drain", "shutdown step overran its share of server.shutdown_grace; abandoning open connections"),
    }
    let stopping = Stopping {
        deadline: stop_by
            .get()
            .copied()
            .unwrap_or_else(|| tokio::time::Instant::now() + grace),
    };
    stopping.step("channels", async { channels.stop() }).await;
    if let Some(compaction) = compaction {
        stopping.step("compaction", compaction.stop()).await;
    }
    if let Some(membership) = membership {
        // Bounded: with NATS unreachable the leases expire after lease_ttl anyway, and the
        // journal and actors still need their share of the grace.
        let bound = config_lease_ttl.min(grace / 3);
        stopping
            .step("cluster leave", async {
                if tokio::time::timeout(bound, membership.leave()).await.is_err() {
                    tracing::warn!(
                        bound_ms = bound.as_millis() as u64,
                        "could not release the leases in time (NATS unreachable?); they expire after cluster.lease_ttl"
                    );
                }
            })
            .await;
    }
    stopping.step("journal flush", journal.flush()).await;
    stopping
        .step("order actors", router.stop(stopping.left()))
        .await;
    stopping.step("dispatchers", dispatch.stop()).await;
    stopping.step("journal close", journal.close()).await;
    upkeep.abort();
    for task in [quota_share, rpc].into_iter().flatten() {
        task.abort();
    }
    telemetry::flush_warnings();
    tracing::info!("orderhub stopped");
    Ok(())
}

/// The background compaction (`journal.compact_every`): archives and removes finished orders
/// older than `journal.retain`, one pass at a time on a blocking thread.
struct Compaction {
    stop: Arc<AtomicBool>,
    wake: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Compaction {
    /// Starts the loop (`None` when `compact_every` is 0s). The first pass runs soon after
    /// start-up, so a restart after a disk alert reclaims space at once.
    fn start(app: &Arc<AppState>) -> Option<Compaction> {
        let every = app.config.journal.compact_every.0;
        if every.is_zero() {
            tracing::info!(
                "journal compaction is off (journal.compact_every = \"0s\"): the journal only grows"
            );
            return None;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let wake = Arc::new(tokio::sync::Notify::new());
        let app = app.clone();
        let (stopping, woken) = (stop.clone(), wake.clone());
        let task = tokio::spawn(async move {
            let mut next = tokio::time::Instant::now() + every.min(Duration::from_secs(10));
            loop {
                tokio::select! {
                    () = tokio::time::sleep_until(next) => {}
                    () = woken.notified() => return,
                }
                next = tokio::time::Instant::now() + every;
                let (app, stop) = (app.clone(), stopping.clone());
                let (done_tx, pass) = tokio::sync::oneshot::channel();
                let spawned = std::thread::Builder::new()
                    .name("journal-compact".into())
                    .spawn(move || {
                        journal::retention::lower_priority();
                        let data_dir = &app.config.server.data_dir;
                        let retention = journal::retention::Retention::from_config(
                            &app.config.journal,
                            data_dir,
                        );
                        let started = Instant::now();
                        let router = app.router.clone();
                        let done = journal::retention::compact(
                            &app.journal,
                            data_dir,
                            &app.policy,
                            &retention,
                            app.now_ms(),
                            &stop,
                            &mut |orders| router.forget(orders),
                        );
                        let _ = done_tx.send((done, started.elapsed()));
                    });
                if let Err(err) = spawned {
                    tracing::error!(error = %err, "cannot start the compaction thread");
                    continue;
                }
                match pass.await {
                    Ok((Ok(done), took)) => {
                        metrics::counter!(t::JOURNAL_COMPACTIONS, "outcome" => "ok").increment(1);
                        if done.orders > 0
                            || done.undone_bytes > 0
                            || done.records_dropped > 0
                            || done.parked > 0
                        {
                            tracing::info!(
                                orders = done.orders,
                                parked_scans = done.parked,
                                records_dropped = done.records_dropped,
                                events = done.events,
                                syncs = done.syncs,
                                files = ?done.files,
                                reclaimed_bytes = done.reclaimed(),
                                journal_bytes = done.disk_after,
                                took_ms = took.as_millis() as u64,
                                "journal compacted: finished orders past journal.retain archived and removed"
                            );
                        }
                    }
                    Ok((Err(err), _)) => {
                        metrics::counter!(t::JOURNAL_COMPACTIONS, "outcome" => "failed")
                            .increment(1);
                        tracing::error!(error = %err, "journal compaction failed; it runs again in journal.compact_every (nothing was lost: what was not removed stays in the journal)");
                    }
                    Err(_) => {
                        metrics::counter!(t::JOURNAL_COMPACTIONS, "outcome" => "failed")
                            .increment(1);
                        tracing::error!("journal compaction panicked");
                    }
                }
                if stopping.load(Ordering::Relaxed) {
                    return;
                }
            }
        });
        Some(Compaction { stop, wake, task })
    }

    /// Stops: a pass under way ends after its batch (an interrupted batch is undone at the
    /// next pass anyway), a waiting loop at once.
    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.wake.notify_one();
        let _ = self.task.await;
    }
}

/// The steps of a shutdown, all within one deadline (`server.shutdown_grace` after the signal):
/// a step that overruns is abandoned and named in the log, and the next ones still run.
struct Stopping {
    deadline: tokio::time::Instant,
}

impl Stopping {
    fn left(&self) -> Duration {
        self.deadline
            .saturating_duration_since(tokio::time::Instant::now())
    }

    async fn step<T>(&self, step: &'static str, work: impl Future<Output = T>) {
        let started = Instant::now();
        if tokio::time::timeout_at(self.deadline, work).await.is_err() {
            tracing::warn!(
                step,
                ran_ms = started.elapsed().as_millis() as u64,
                "shutdown step overran server.shutdown_grace; abandoned (acknowledged events are durable, the rest is rebuilt at next start)"
            );
        }
    }
}

/// An order on hold and the sinks its hold keeps back (`None`: all).
type HeldOrder = (String, Option<Vec<String>>);

/// The orders the index has on hold (of those `wanted` picks), each with the sinks its hold
/// keeps back (`None`: all), read by folding the order: holds are few, and their actors may not
/// run until something happens to them.
fn held_in_index(
    journal: &Journal,
    policy: &OrderPolicy,
    wanted: impl Fn(&str) -> bool,
) -> Result<Vec<HeldOrder>, journal::JournalError> {
    let listed = journal.list(&journal::OrderFilter {
        state: Some(orderhub_actors::order::OrderState::OnHold),
        limit: i64::MAX as usize,
        ..Default::default()
    })?;
    let mut held = Vec::new();
    for order in listed.into_iter().filter(|o| wanted(&o.key)) {
        let events = journal.events_of(&order.key)?;
        let folded = orderhub_actors::order::Order::replay(order.key.as_str(), &events, policy);
        let sinks = folded.hold.and_then(|hold| hold.syncs);
        held.push((order.key, sinks));
    }
    Ok(held)
}

fn routes(state: Arc<AppState>) -> Router {
    // The query and operations API: operators only (auth.rs).
    let operated = Router::new()
        .route("/v1/sources", get(api::sources))
        .route("/v1/orders", get(api::list_orders))
        .route("/v1/orders/{key}", get(api::get_order))
        .route("/v1/orders/{key}/hold", post(api::hold))
        .route("/v1/orders/{key}/release", post(api::release))
        .route("/v1/stock", get(api::stock::list).put(api::stock::put_csv))
        .route(
            "/v1/stock/{sku}",
            get(api::stock::get_one).put(api::stock::put_one),
        )
        .route(
            "/v1/reports/reconciliation",
            get(api::reports::reconciliation),
        )
        .route("/board", get(board::page))
        .route("/v1/board/snapshot", get(board::current))
        .route("/v1/board/events", get(board::events))
        .route("/v1/board/qr", get(board::qr))
        .route("/v1/board/find", get(board::find))
        .route("/v1/approvals", get(api::approvals::list))
        .route("/v1/approvals/{id}/approve", post(api::approvals::approve))
        .route("/v1/approvals/{id}/reject", post(api::approvals::reject))
        .route("/v1/dispatch/dead-letters", get(api::dead_letters))
        .route(
            "/v1/dispatch/dead-letters/{row}/retry",
            post(api::retry_dead_letter),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_operator,
        ));
    Router::new()
        .route(
            "/v1/ingest/{source}",
            post(ingest::ingest_source).get(ingest::verify_source_url),
        )
        .route(
            "/v1/ingest/{source}/{token}",
            post(ingest::ingest_source_with_token),
        )
        .route("/v1/events", post(ingest::ingest_events))
        .merge(operated)
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .route("/metrics", get(api::metrics))
        .fallback(api::not_found)
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state)
}

#[cfg(test)]
mod listen_tests {
    use std::time::Duration;

    /// Nothing accepts, so every connection waits in the backlog: with the 128 of
    /// `TcpListener::bind` the 130th connect would hang until the client resends its SYN.
    #[tokio::test]
    async fn the_listener_keeps_more_than_128_connections_waiting() {
        let want = 300;
        let somaxconn = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|text| text.trim().parse::<usize>().ok())
            .unwrap_or(0);
        if somaxconn < want {
            eprintln!(
                "net.core.somaxconn is {somaxconn}: the kernel caps every backlog below {want}, nothing to check here"
            );
            return;
        }
        let listener = super::listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut waiting = Vec::new();
        for n in 0..want {
            let connect = tokio::net::TcpStream::connect(addr);
            match tokio::time::timeout(Duration::from_millis(500), connect).await {
                Ok(Ok(stream)) => waiting.push(stream),
                other => panic!("connection {n} of {want} did not get into the backlog: {other:?}"),
            }
        }
        assert_eq!(waiting.len(), want);
    }
}
