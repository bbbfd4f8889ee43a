//! Configuration: serde structs with `deny_unknown_fields`, an embedded default, layering of a
//! user file over it (top-level keys replace), and validation that names the offending key and
//! its line. This is the root only: each kind of source owns its `[sources.KIND]` table (its
//! struct, validation and status tables live beside its adapter in `ingest/`); here they are
//! kept as written, and `ingest::Sources::configure` checks them with the same error form.

mod approvals;
mod locate;

pub use approvals::ApprovalConfig;

use humantime::parse_duration;
use orderhub_actors::dispatch::{
    DEFAULT_WINDOW, RetryPolicy, RuleError, RuleSet, RuleSpec, SinkSpec,
};
use orderhub_actors::order::{OrderPolicy, OrderState, SlaRule};
use orderhub_actors::shard::ShardConfig;
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The embedded default configuration.
pub const DEFAULT_CONFIG: &str = include_str!("config/default.toml");

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {file}: {source}")]
    Read {
        /// The file.
        file: String,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML is malformed or does not fit the schema.
    #[error("{file} line {line}: {message}")]
    Parse {
        /// The file.
        file: String,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A value is out of range or inconsistent.
    #[error("{file} line {line}: {key}: {message}")]
    Invalid {
        /// The file.
        file: String,
        /// 1-based line (0 when the key comes from the embedded default).
        line: usize,
        /// Dotted key path, e.g. `sla[1].from`.
        key: String,
        /// What is wrong.
        message: String,
    },
}

impl ConfigError {
    /// A short label for metrics and exit messages.
    pub fn kind(&self) -> &'static str {
        match self {
            ConfigError::Read { .. } => "read",
            ConfigError::Parse { .. } => "parse",
            ConfigError::Invalid { .. } => "invalid",
        }
    }
}

/// A duration written as `500ms`, `5s`, `2h`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text)
            .map(HumanDuration)
            .map_err(|e| serde::de::Error::custom(format!("invalid duration {text:?}: {e}")))
    }
}

/// `[server]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Where the journal lives.
    pub data_dir: PathBuf,
    /// Largest accepted ingest body.
    pub max_body_bytes: usize,
    /// How long shutdown may take before it gives up waiting.
    pub shutdown_grace: HumanDuration,
    /// How long a query waits for an order actor.
    pub query_timeout: HumanDuration,
}

/// `[journal]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalConfig {
    /// Events per group commit at most.
    pub batch_max_events: usize,
    /// Extra wait for a fuller batch.
    pub batch_max_wait: HumanDuration,
    /// Append requests that may wait for the writer.
    pub queue_capacity: usize,
    /// Journaled events not yet applied by actors beyond which ingest answers 429.
    pub max_pending_events: i64,
    /// A finished order whose last event is older than this is archived and removed.
    pub retain: HumanDuration,
    /// How often the background compaction runs (zero: never).
    pub compact_every: HumanDuration,
    /// Where archived orders go, relative to the data directory; empty: delete without
    /// archiving.
    pub archive_dir: String,
}

/// `[actors]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActorsConfig {
    /// Number of shards.
    pub shards: usize,
    /// Passivate an order actor after this long without a message.
    pub idle_timeout: HumanDuration,
    /// Cap on active order actors per shard.
    pub max_active_per_shard: usize,
}

/// One `[[sla]]` rule.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlaConfig {
    /// Unique name.
    pub name: String,
    /// Canonical state that arms it.
    pub from: String,
    /// How long the order may stay in `from`.
    pub within: HumanDuration,
    /// Restart the deadline on every report while in `from`.
    #[serde(default)]
    pub reset_on_event: bool,
}

/// `[stock]`: stock reservation (absent: off). Only SKUs with a stock record reserve.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StockConfig {
    /// How long a paid order's reservation lasts unless the warehouse allocates it.
    #[serde(default = "default_reserve_ttl")]
    pub reserve_ttl: HumanDuration,
}

fn default_reserve_ttl() -> HumanDuration {
    HumanDuration(Duration::from_secs(15 * 60))
}

/// `[reports]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportsConfig {
    /// The UTC offset whose calendar days reports count (`+08:00`).
    #[serde(default = "default_report_timezone")]
    pub timezone: String,
}

impl Default for ReportsConfig {
    fn default() -> Self {
        ReportsConfig {
            timezone: default_report_timezone(),
        }
    }
}

fn default_report_timezone() -> String {
    "+08:00".into()
}

/// `[dispatch]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DispatchConfig {
    /// Pending syncs beyond which ingest answers 429.
    pub max_backlog: i64,
}

/// The protocol a sink speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkKind {
    /// JSON POST signed with Standard Webhooks; `webhook-id` is the idempotency key.
    Webhook,
    /// Kingdee K3 Cloud WebAPI: login with a session cookie, Save (and Submit) a bill.
    Kingdee,
    /// WangDianTong openapi2 `trade_push.php`, signed with its length-prefixed MD5 scheme.
    Wdt,
    /// SF Express `EXP_RECE_CREATE_ORDER` with `msgDigest`.
    Sf,
    /// WeCom (企业微信) group robot.
    Wecom,
    /// DingTalk custom robot, HMAC-SHA256 signed.
    Dingtalk,
}

fn default_burst() -> u32 {
    1
}
fn default_in_flight() -> usize {
    8
}
fn default_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}
fn default_initial_backoff() -> HumanDuration {
    HumanDuration(orderhub_actors::dispatch::policy::DEFAULT_INITIAL_BACKOFF)
}
fn default_max_backoff() -> HumanDuration {
    HumanDuration(orderhub_actors::dispatch::policy::DEFAULT_MAX_BACKOFF)
}
fn default_max_attempts() -> u32 {
    orderhub_actors::dispatch::policy::DEFAULT_MAX_ATTEMPTS
}
fn default_breaker_threshold() -> u32 {
    orderhub_actors::dispatch::policy::DEFAULT_BREAKER_THRESHOLD
}
fn default_breaker_cooldown() -> HumanDuration {
    HumanDuration(orderhub_actors::dispatch::policy::DEFAULT_BREAKER_COOLDOWN)
}

/// A rate such as `50/s`, `20/min` or `3000/h`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Sends allowed per period.
    pub count: u32,
    /// The period.
    pub per: Duration,
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let invalid = || {
            serde::de::Error::custom(format!("invalid rate {text:?} (e.g. \"50/s\", \"20/min\")"))
        };
        let (count, unit) = text.split_once('/').ok_or_else(invalid)?;
        let count: u32 = count.trim().parse().map_err(|_| invalid())?;
        let per = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            _ => return Err(invalid()),
        };
        if count == 0 {
            return Err(invalid());
        }
        Ok(Rate { count, per })
    }
}

/// One `[[sinks]]` entry.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// Unique name; rules refer to it.
    pub name: String,
    /// Protocol.
    pub kind: SinkKind,
    /// Endpoint.
    pub url: String,
    /// Environment variable holding the signing secret (`whsec_…` for webhooks, the robot
    /// key for WeCom, the `SEC…` secret for DingTalk).
    pub secret_env: Option<String>,
    /// Kind-specific credentials: name → environment variable (e.g. `password`).
    #[serde(default)]
    pub credentials: BTreeMap<String, String>,
    /// Kind-specific settings (e.g. `form_id`, `shop_no`, `monthly_card`).
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// Quota; work over it waits.
    pub rate: Rate,
    /// Sends allowed back to back before pacing applies.
    #[serde(default = "default_burst")]
    pub burst: u32,
    /// Sends in flight at most.
    #[serde(default = "default_in_flight")]
    pub max_in_flight: usize,
    /// How long one send may take.
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    /// Backoff before the second attempt.
    #[serde(default = "default_initial_backoff")]
    pub retry_initial: HumanDuration,
    /// Longest backoff.
    #[serde(default = "default_max_backoff")]
    pub retry_max: HumanDuration,
    /// Attempts before dead-lettering.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Consecutive transient failures that open the breaker.
    #[serde(default = "default_breaker_threshold")]
    pub breaker_threshold: u32,
    /// How long the breaker stays open.
    #[serde(default = "default_breaker_cooldown")]
    pub breaker_cooldown: HumanDuration,
}

/// What an operator may do; each role may do what the ones below it may.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads orders, sources and dead letters.
    Viewer,
    /// Also acts on orders and syncs (retries a dead letter).
    Operator,
    /// Also decides approvals.
    Approver,
    /// Everything.
    Admin,
}

impl Role {
    /// The role's name as configured.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Approver => "approver",
            Role::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Role::Viewer, Role::Operator, Role::Approver, Role::Admin]
            .into_iter()
            .find(|role| role.as_str() == s)
            .ok_or_else(|| format!("{s:?} is no role (viewer, operator, approver, admin)"))
    }
}

/// One `[[operators]]` entry: who may use the query and operations API.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorConfig {
    /// Unique name, written where the operator acts.
    pub name: String,
    /// What the operator may do.
    pub role: Role,
    /// Environment variable holding the operator's token.
    pub token_env: String,
}

/// `[cluster]`: cluster mode on NATS JetStream (absent: a single node on its SQLite journal).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// NATS servers to connect to (any of them; the client learns the rest).
    pub nats: Vec<String>,
    /// This node's name, unique in the cluster (default: the host name).
    #[serde(default = "default_node")]
    pub node: String,
    /// Partitions of the event stream; fixed when the stream is first created.
    #[serde(default = "default_partitions")]
    pub partitions: u32,
    /// JetStream replicas of orderhub's stream and KV buckets.
    #[serde(default = "default_replicas")]
    pub replicas: usize,
    /// How long a partition lease (and a membership heartbeat) lives without renewal: how fast
    /// a dead node's partitions move.
    #[serde(default = "default_lease_ttl")]
    pub lease_ttl: HumanDuration,
    /// How often the owner of a partition writes its snapshot (the partition's orders' events
    /// and stream position) to the `orderhub_snapshots` object store, from which a node taking
    /// a partition it never held rebuilds it instead of replaying the whole stream.
    #[serde(default = "default_snapshot_every")]
    pub snapshot_every: HumanDuration,
}

fn default_node() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|name| !name.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|name| name.trim().to_owned())
        })
        .unwrap_or_default()
}
fn default_partitions() -> u32 {
    64
}
fn default_replicas() -> usize {
    3
}
fn default_lease_ttl() -> HumanDuration {
    HumanDuration(Duration::from_secs(6))
}
fn default_snapshot_every() -> HumanDuration {
    HumanDuration(Duration::from_secs(300))
}

/// One `[[rules]]` entry: the actors' rule spec, read as configured.
pub type RuleConfig = RuleSpec;

/// A configuration file: every top-level key optional, so a user file can set just a few.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    server: Option<ServerConfig>,
    journal: Option<JournalConfig>,
    actors: Option<ActorsConfig>,
    sla: Option<Vec<SlaConfig>>,
    allowed_sources: Option<BTreeMap<String, Vec<String>>>,
    sources: Option<BTreeMap<String, toml::Value>>,
    dispatch: Option<DispatchConfig>,
    sinks: Option<Vec<SinkConfig>>,
    rules: Option<Vec<RuleConfig>>,
    pollers: Option<BTreeMap<String, toml::Value>>,
    operators: Option<Vec<OperatorConfig>>,
    approvals: Option<Vec<ApprovalConfig>>,
    stock: Option<StockConfig>,
    reports: Option<ReportsConfig>,
    source_roles: Option<BTreeMap<String, orderhub_actors::order::SourceRole>>,
    cluster: Option<ClusterConfig>,
}

/// What the user's file set, to point errors at the right file and line.
#[derive(Clone, Debug, Default)]
struct Origins {
    user_file: Option<(String, String)>,
    /// The user's file as a table (empty without one).
    user: toml::Table,
    /// The default with the user's file merged in: what the engine runs with.
    effective: toml::Table,
}

impl Origins {
    /// Whether the user's file sets the dotted `key` (or a table above it).
    fn user_sets(&self, key: &str) -> bool {
        let mut table = &self.user;
        for part in key.split('.') {
            let part = part.split('[').next().unwrap_or_default();
            match table.get(part) {
                Some(toml::Value::Table(inner)) => table = inner,
                Some(_) => return true,
                None => return false,
            }
        }
        true
    }
}

impl Origins {
    /// A schema error of the merged configuration, pointed at the file and line that set the
    /// key (toml names the key path as "in `a.b`").
    fn schema_error(&self, error: &toml::de::Error) -> ConfigError {
        // Display carries the key path ("…\nin `server`"); message() alone does not.
        let text = error.to_string();
        let text = text.trim_end();
        let (message, path) = match text.rsplit_once("\nin `") {
            Some((message, path)) => (message, path.trim_end_matches('`')),
            None => (text, ""),
        };
        let key = match message.split('`').nth(1) {
            Some(field) if message.starts_with("unknown field") && !path.is_empty() => {
                format!("{path}.{field}")
            }
            Some(field) if message.starts_with("unknown field") => field.to_owned(),
            _ => path.to_owned(),
        };
        let (file, text) = match &self.user_file {
            Some((file, text)) if self.user_sets(&key) => (file.clone(), text.as_str()),
            _ => ("<embedded default>".to_owned(), DEFAULT_CONFIG),
        };
        ConfigError::Parse {
            file,
            line: locate::line_of_key(text, &key),
            message: message.to_owned(),
        }
    }
}

/// Merges `layer` into `base` key by key: a table merges into a table; anything else (a value,
/// an array — `[[sinks]]`, `[[rules]]`, `[[sla]]` — or a table over a non-table) replaces.
fn merge(base: &mut toml::Table, layer: toml::Table) {
    for (key, value) in layer {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(base)), toml::Value::Table(layer)) => merge(base, layer),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// A complete, validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// `[server]`.
    pub server: ServerConfig,
    /// `[journal]`.
    pub journal: JournalConfig,
    /// `[actors]`.
    pub actors: ActorsConfig,
    /// `[[sla]]`.
    pub sla: Vec<SlaConfig>,
    /// `[allowed_sources]`.
    pub allowed_sources: BTreeMap<String, Vec<String>>,
    /// `[sources.KIND]` tables as written: each kind of source parses and checks its own (see
    /// `ingest::Sources::configure`; this module knows no source).
    pub sources: BTreeMap<String, toml::Value>,
    /// `[dispatch]`.
    pub dispatch: DispatchConfig,
    /// `[[sinks]]`.
    pub sinks: Vec<SinkConfig>,
    /// `[[rules]]`.
    pub rules: Vec<RuleConfig>,
    /// `[pollers.NAME]` tables as written: periodic pulls of changed orders (parsed by the
    /// poller source).
    pub pollers: BTreeMap<String, toml::Value>,
    /// `[[operators]]`: who may use the query and operations API (none: loopback only).
    pub operators: Vec<OperatorConfig>,
    /// `[[approvals]]`: approval flows (an intercept two approvers must agree to).
    pub approvals: Vec<ApprovalConfig>,
    /// `[stock]`: stock reservation (`None`: off).
    pub stock: Option<StockConfig>,
    /// `[reports]`.
    pub reports: ReportsConfig,
    /// `[source_roles]`: what each source is (`channel`, `erp`, `wms`, `courier`, `other`), for
    /// telling when systems disagree; unnamed sources take their default.
    pub source_roles: BTreeMap<String, orderhub_actors::order::SourceRole>,
    /// `[cluster]`: `None` runs a single node.
    pub cluster: Option<ClusterConfig>,
    origins: Origins,
}

/// The file's TOML as a table (syntax errors name the line).
fn parse_table(file: &str, text: &str) -> Result<toml::Table, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        file: file.to_owned(),
        line: e.span().map_or(0, |s| locate::line_at(text, s.start)),
        message: e.message().trim_end_matches('\n').to_owned(),
    })
}

impl Config {
    /// The embedded default.
    pub fn embedded() -> Result<Config, ConfigError> {
        Self::layered(None)
    }

    /// Reads `path` and layers it over the embedded default.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: file.clone(),
            source,
        })?;
        Self::layered(Some((file, text)))
    }

    /// Layers `user` (file name, text) over the embedded default — every table merges key by
    /// key, arrays of tables replace — and validates the result.
    pub fn layered(user: Option<(String, String)>) -> Result<Config, ConfigError> {
        let mut effective = parse_table("<embedded default>", DEFAULT_CONFIG)?;
        let mut origins = Origins::default();
        if let Some((file, text)) = &user {
            origins.user = parse_table(file, text)?;
            merge(&mut effective, origins.user.clone());
        }
        origins.user_file = user;
        let file: ConfigFile = toml::Value::Table(effective.clone())
            .try_into()
            .map_err(|e: toml::de::Error| origins.schema_error(&e))?;
        origins.effective = effective;
        let missing = |key: &str| ConfigError::Invalid {
            file: "<embedded default>".into(),
            line: 0,
            key: key.into(),
            message: "missing".into(),
        };
        let config = Config {
            server: file.server.ok_or_else(|| missing("server"))?,
            journal: file.journal.ok_or_else(|| missing("journal"))?,
            actors: file.actors.ok_or_else(|| missing("actors"))?,
            sla: file.sla.unwrap_or_default(),
            allowed_sources: file.allowed_sources.unwrap_or_default(),
            sources: file.sources.unwrap_or_default(),
            dispatch: file.dispatch.ok_or_else(|| missing("dispatch"))?,
            sinks: file.sinks.unwrap_or_default(),
            rules: file.rules.unwrap_or_default(),
            pollers: file.pollers.unwrap_or_default(),
            operators: file.operators.unwrap_or_default(),
            approvals: file.approvals.unwrap_or_default(),
            stock: file.stock,
            reports: file.reports.unwrap_or_default(),
            source_roles: file.source_roles.unwrap_or_default(),
            cluster: file.cluster,
            origins,
        };
        config.validate()?;
        Ok(config)
    }

    /// The effective configuration (the default with the user's file merged in) as TOML.
    pub fn effective_toml(&self) -> String {
        toml::to_string(&self.origins.effective)
            .unwrap_or_else(|e| format!("# cannot print the configuration: {e}\n"))
    }

    /// An error about `key` (dotted path), pointing at its line in the file that set it.
    pub fn invalid(&self, key: String, message: impl Into<String>) -> ConfigError {
        match &self.origins.user_file {
            Some((file, text)) if self.origins.user_sets(&key) => ConfigError::Invalid {
                file: file.clone(),
                line: locate::line_of_key(text, &key),
                key,
                message: message.into(),
            },
            _ => ConfigError::Invalid {
                file: "<embedded default>".into(),
                line: locate::line_of_key(DEFAULT_CONFIG, &key),
                key,
                message: message.into(),
            },
        }
    }

    fn validate_cluster(&self, cluster: &ClusterConfig) -> Result<(), ConfigError> {
        if cluster.nats.is_empty() {
            return Err(self.invalid(
                "cluster.nats".into(),
                "lists the NATS servers to connect to, e.g. [\"nats://10.0.0.1:4222\"]",
            ));
        }
        for (i, url) in cluster.nats.iter().enumerate() {
            let scheme_ok = ["nats://", "tls://", "ws://", "wss://"]
                .iter()
                .any(|scheme| url.starts_with(scheme));
            if !scheme_ok || url.parse::<async_nats::ServerAddr>().is_err() {
                return Err(self.invalid(
                    format!("cluster.nats[{i}]"),
                    format!("{url:?} is not a NATS server address like \"nats://host:4222\""),
                ));
            }
        }
        // The name is a KV key and part of subjects: letters, digits, '-' and '_'.
        let node_ok = !cluster.node.is_empty()
            && cluster.node.len() <= 64
            && cluster
                .node
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !node_ok {
            return Err(self.invalid(
                "cluster.node".into(),
                format!(
                    "{:?} is not a node name: 1 to 64 letters, digits, '-' or '_', unique per node (default: the host name)",
                    cluster.node
                ),
            ));
        }
        if !(1..=4096).contains(&cluster.partitions) {
            return Err(self.invalid("cluster.partitions".into(), "must be 1 to 4096"));
        }
        if !(1..=5).contains(&cluster.replicas) {
            return Err(self.invalid(
                "cluster.replicas".into(),
                "must be 1 to 5 (JetStream's limit)",
            ));
        }
        if cluster.lease_ttl.0 < Duration::from_secs(1) {
            return Err(self.invalid("cluster.lease_ttl".into(), "must be at least 1s"));
        }
        if cluster.snapshot_every.0 < Duration::from_secs(1) {
            return Err(self.invalid("cluster.snapshot_every".into(), "must be at least 1s"));
        }
        Ok(())
    }

    /// Checks ranges and cross-references; the error names the key and its line.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = |value: usize, key: &str| {
            if value == 0 {
                Err(self.invalid(key.into(), "must be at least 1"))
            } else {
                Ok(())
            }
        };
        positive(self.server.max_body_bytes, "server.max_body_bytes")?;
        positive(self.journal.batch_max_events, "journal.batch_max_events")?;
        positive(self.journal.queue_capacity, "journal.queue_capacity")?;
        positive(self.actors.shards, "actors.shards")?;
        positive(
            self.actors.max_active_per_shard,
            "actors.max_active_per_shard",
        )?;
        if self.journal.max_pending_events < 1 {
            return Err(self.invalid("journal.max_pending_events".into(), "must be at least 1"));
        }
        if self.journal.retain.0 < Duration::from_secs(60) {
            return Err(self.invalid(
                "journal.retain".into(),
                "must be at least 1m: a finished order's late reports (refunds, returns, duplicate pushes) must still find it",
            ));
        }
        if self.journal.archive_dir.contains("..") {
            return Err(self.invalid(
                "journal.archive_dir".into(),
                format!(
                    "{:?} must stay inside the data directory (no '..')",
                    self.journal.archive_dir
                ),
            ));
        }
        if self.actors.shards > 4096 {
            return Err(self.invalid("actors.shards".into(), "must be at most 4096"));
        }
        if self.actors.idle_timeout.0.is_zero() {
            return Err(self.invalid("actors.idle_timeout".into(), "must be longer than 0s"));
        }
        let mut names = std::collections::HashSet::new();
        for (i, rule) in self.sla.iter().enumerate() {
            if rule.name.is_empty() || !names.insert(rule.name.as_str()) {
                return Err(self.invalid(
                    format!("sla[{i}].name"),
                    format!(
                        "rule names must be unique and non-empty, got {:?}",
                        rule.name
                    ),
                ));
            }
            if let Err(e) = rule.from.parse::<OrderState>() {
                return Err(self.invalid(format!("sla[{i}].from"), e.to_string()));
            }
            if rule.within.0.is_zero() {
                return Err(self.invalid(format!("sla[{i}].within"), "must be longer than 0s"));
            }
        }
        for (state, sources) in &self.allowed_sources {
            if let Err(e) = state.parse::<OrderState>() {
                return Err(self.invalid(format!("allowed_sources.{state}"), e.to_string()));
            }
            if sources.is_empty() {
                return Err(self.invalid(
                    format!("allowed_sources.{state}"),
                    "an empty list would forbid the state for every source",
                ));
            }
        }
        let mut operator_names = std::collections::HashSet::new();
        for (i, operator) in self.operators.iter().enumerate() {
            if operator.name.is_empty() || !operator_names.insert(operator.name.as_str()) {
                return Err(self.invalid(
                    format!("operators[{i}].name"),
                    format!(
                        "operator names must be unique and non-empty, got {:?}",
                        operator.name
                    ),
                ));
            }
            if operator.token_env.is_empty() {
                return Err(self.invalid(
                    format!("operators[{i}].token_env"),
                    "names the environment variable holding the operator's token",
                ));
            }
        }
        if let Some(cluster) = &self.cluster {
            self.validate_cluster(cluster)?;
        }
        let mut sink_names = std::collections::HashSet::new();
        for (i, sink) in self.sinks.iter().enumerate() {
            if sink.name.is_empty() || !sink_names.insert(sink.name.as_str()) {
                return Err(self.invalid(
                    format!("sinks[{i}].name"),
                    format!(
                        "sink names must be unique and non-empty, got {:?}",
                        sink.name
                    ),
                ));
            }
            if !(sink.url.starts_with("http://") || sink.url.starts_with("https://")) {
                return Err(self.invalid(
                    format!("sinks[{i}].url"),
                    format!("{:?} is not an http:// or https:// URL", sink.url),
                ));
            }
            if sink.max_in_flight == 0 || sink.burst == 0 || sink.max_attempts == 0 {
                return Err(self.invalid(
                    format!("sinks[{i}]"),
                    "max_in_flight, burst and max_attempts must be at least 1",
                ));
            }
        }
        if self.origins.user_sets("rules") {
            for (i, rule) in self.rules.iter().enumerate() {
                for sink in rule
                    .sync
                    .iter()
                    .flatten()
                    .chain(rule.notify.iter())
                    .chain(rule.hold.sinks())
                {
                    if !sink_names.contains(sink.as_str()) {
                        return Err(self.invalid(
                            format!("rules[{i}]"),
                            format!(
                                "rule {:?} sends to sink {sink:?}, which is not configured",
                                rule.name
                            ),
                        ));
                    }
                }
            }
        }
        for (i, rule) in self.rules.iter().enumerate() {
            let kingdee = self.sinks.iter().any(|sink| {
                sink.kind == SinkKind::Kingdee
                    && rule.sync.iter().flatten().any(|name| *name == sink.name)
            });
            if kingdee && rule.template.is_none() {
                return Err(self.invalid(
                    format!("rules[{i}].template"),
                    format!(
                        "rule {:?} syncs to a kingdee sink: it needs a template that renders {{\"Model\": {{…}}}}",
                        rule.name
                    ),
                ));
            }
        }
        self.validate_approvals()?;
        if let Err(message) = crate::journal::reconcile::parse_offset(&self.reports.timezone) {
            return Err(self.invalid("reports.timezone".into(), message));
        }
        if let Some(stock) = &self.stock {
            if self.cluster.is_some() {
                return Err(self.invalid(
                    "stock".into(),
                    "stock reservation is not available in cluster mode yet (a SKU's ledger is \
                     not owned per partition, so two nodes could sell the last unit twice): \
                     remove [stock] or run a single node",
                ));
            }
            if stock.reserve_ttl.0 < Duration::from_secs(1) {
                return Err(self.invalid("stock.reserve_ttl".into(), "must be at least 1s"));
            }
        }
        if let Err(e) = self.rule_set() {
            if let Some(index) = self
                .approvals
                .iter()
                .position(|a| e.rule == format!("approval {}", a.name))
            {
                return Err(self.invalid(format!("approvals[{index}]"), e.to_string()));
            }
            let index = self
                .rules
                .iter()
                .position(|r| r.name == e.rule)
                .unwrap_or(0);
            return Err(self.invalid(format!("rules[{index}]"), e.to_string()));
        }
        Ok(())
    }

    /// Default rules whose sink is not configured: `(rule, sink)`. They are left out.
    pub fn inactive_rules(&self) -> Vec<(String, String)> {
        let sinks: std::collections::HashSet<&str> =
            self.sinks.iter().map(|s| s.name.as_str()).collect();
        self.rules
            .iter()
            .flat_map(|r| {
                r.sync
                    .iter()
                    .flatten()
                    .chain(r.notify.iter())
                    .filter(|sink| !sinks.contains(sink.as_str()))
                    .map(|sink| (r.name.clone(), sink.clone()))
            })
            .collect()
    }

    /// The compiled rules, without the inactive ones.
    pub fn rule_set(&self) -> Result<std::sync::Arc<RuleSet>, RuleError> {
        let inactive = self.inactive_rules();
        let specs = self
            .rules
            .iter()
            .filter(|r| !inactive.iter().any(|(name, _)| *name == r.name))
            .cloned()
            .collect();
        RuleSet::compile_with_approvals(specs, self.approval_specs())
    }

    /// The dispatch settings of every sink.
    pub fn sink_specs(&self) -> Vec<SinkSpec> {
        self.sinks
            .iter()
            .map(|s| SinkSpec {
                name: s.name.clone(),
                rate_count: s.rate.count,
                rate_per: s.rate.per,
                burst: s.burst,
                max_in_flight: s.max_in_flight,
                timeout: s.timeout.0,
                retry: RetryPolicy {
                    initial_backoff: s.retry_initial.0,
                    max_backoff: s.retry_max.0,
                    max_attempts: s.max_attempts,
                },
                breaker_threshold: s.breaker_threshold,
                breaker_cooldown: s.breaker_cooldown.0,
                window: DEFAULT_WINDOW,
                holds_back_ingest: true,
            })
            .collect()
    }

    /// The state machine's policy.
    pub fn policy(&self) -> OrderPolicy {
        let mut policy = OrderPolicy::permissive();
        for (source, role) in &self.source_roles {
            policy = policy.with_role(source, *role);
        }
        if let Some(stock) = &self.stock {
            policy = policy.with_stock(orderhub_actors::order::StockSpec {
                reserve_ttl_ms: stock.reserve_ttl.0.as_millis().min(i64::MAX as u128) as i64,
            });
        }
        // validate() compiled the rules already; an error here cannot happen for a Config.
        if let Ok(rules) = self.rule_set() {
            policy = policy.with_rules(rules);
        }
        for (state, sources) in &self.allowed_sources {
            if let Ok(state) = state.parse() {
                policy = policy.allow_only(state, sources.clone());
            }
        }
        for rule in &self.sla {
            if let Ok(from) = rule.from.parse() {
                policy = policy.with_sla(SlaRule {
                    name: rule.name.clone(),
                    from,
                    within_ms: rule.within.0.as_millis() as i64,
                    reset_on_event: rule.reset_on_event,
                });
            }
        }
        policy
    }

    /// The shard configuration.
    pub fn shard_config(&self) -> ShardConfig {
        ShardConfig {
            shards: self.actors.shards,
            idle_timeout: self.actors.idle_timeout.0,
            max_active_per_shard: self.actors.max_active_per_shard,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(text: &str) -> Result<Config, ConfigError> {
        Config::layered(Some(("test.toml".into(), text.into())))
    }

    #[test]
    fn embedded_default_is_valid() {
        let config = Config::embedded().unwrap();
        assert_eq!(config.sla.len(), 3);
        assert_eq!(config.rules.len(), 4);
        assert_eq!(config.inactive_rules().len(), 4, "no sinks by default");
        assert_eq!(config.actors.shards, 16);
        assert!(config.sources.contains_key("douyin") && config.sources.contains_key("events"));
    }

    #[test]
    fn cluster_snapshots_default_to_every_five_minutes_and_refuse_less_than_a_second() {
        let nats = "[cluster]\nnats = [\"nats://127.0.0.1:4222\"]\nnode = \"a\"\n";
        let cluster = user(nats).unwrap().cluster.unwrap();
        assert_eq!(cluster.snapshot_every.0, Duration::from_secs(300));
        let cluster = user(&format!("{nats}snapshot_every = \"30s\"\n"))
            .unwrap()
            .cluster
            .unwrap();
        assert_eq!(cluster.snapshot_every.0, Duration::from_secs(30));
        let error = user(&format!("{nats}snapshot_every = \"500ms\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("cluster.snapshot_every") && error.contains("at least 1s"),
            "{error}"
        );
    }

    #[test]
    fn retention_keys_have_defaults_and_a_file_setting_only_them_keeps_the_rest() {
        let config = Config::embedded().unwrap().journal;
        assert_eq!(config.retain.0, Duration::from_secs(30 * 86_400));
        assert_eq!(config.compact_every.0, Duration::from_secs(600));
        assert_eq!(config.archive_dir, "archive");
        let config = user("[journal]\nretain = \"7d\"\narchive_dir = \"\"\n")
            .unwrap()
            .journal;
        assert_eq!(config.retain.0, Duration::from_secs(7 * 86_400));
        assert_eq!(config.archive_dir, "");
        assert_eq!(config.compact_every.0, Duration::from_secs(600));
        assert_eq!(
            config.batch_max_events, 2048,
            "the other journal defaults stay"
        );
        let off = user("[journal]\ncompact_every = \"0s\"\n").unwrap();
        assert!(off.journal.compact_every.0.is_zero());
        let err = user("[journal]\nretain = \"10s\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("journal.retain") && err.contains("at least 1m"),
            "{err}"
        );
        let err = user("[journal]\narchive_dir = \"../elsewhere\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("journal.archive_dir"), "{err}");
        let err = user("[journal]\nretain = \"a month\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 2") && err.contains("invalid duration"),
            "{err}"
        );
    }

    #[test]
    fn a_user_key_replaces_the_default_key_whole() {
        let config = user("[[sla]]\nname = \"x\"\nfrom = \"paid\"\nwithin = \"1s\"\n").unwrap();
        assert_eq!(config.sla.len(), 1);
        assert_eq!(config.sla[0].within.0, Duration::from_secs(1));
        assert_eq!(config.actors.shards, 16, "untouched keys keep the default");
    }

    #[test]
    fn tables_merge_into_the_default_key_by_key() {
        let config = user(
            "[journal]\nbatch_max_events = 7\n[sources.douyin.status_map]\n\"999\" = \"none\"\n",
        )
        .unwrap();
        assert_eq!(config.journal.batch_max_events, 7);
        assert_eq!(
            config.journal.queue_capacity, 4096,
            "the other journal defaults stay"
        );
        let douyin = config.sources["douyin"].as_table().unwrap();
        assert_eq!(
            douyin["app_key_env"].as_str(),
            Some("ORDERHUB_DOUYIN_APP_KEY")
        );
        let tags = douyin["status_map"].as_table().unwrap();
        assert_eq!(tags["999"].as_str(), Some("none"));
        assert_eq!(tags["101"].as_str(), Some("paid"), "the default tags stay");
        assert!(
            config.sources.contains_key("youzan"),
            "the other sources stay"
        );
        let printed = config.effective_toml();
        assert!(printed.contains("batch_max_events = 7"), "{printed}");
        assert!(printed.contains("queue_capacity = 4096"), "{printed}");
        // Arrays of tables replace.
        let config = user("[[rules]]\nname = \"r\"\nwhen = \"true\"\ntag = \"t\"\n").unwrap();
        assert_eq!(config.rules.len(), 1);
    }

    #[test]
    fn unknown_keys_are_named_with_their_line() {
        let err = user("[server]\nlisten = \"127.0.0.1:1\"\nlissen = 3\n").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("test.toml line 3"), "{text}");
        assert!(text.contains("lissen"), "{text}");
    }

    #[test]
    fn semantic_errors_name_the_key_and_line() {
        let err = user(
            "[[sla]]\nname = \"a\"\nfrom = \"paid\"\nwithin = \"1h\"\n\n[[sla]]\nname = \"b\"\nfrom = \"shiped\"\nwithin = \"1h\"\n",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "test.toml line 8: sla[1].from: unknown canonical state \"shiped\""
        );
        let err = user("[actors]\nshards = 0\nidle_timeout = \"1m\"\nmax_active_per_shard = 5\n")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "test.toml line 2: actors.shards: must be at least 1"
        );
    }

    #[test]
    fn bad_durations_are_explained() {
        let err = user("[[sla]]\nname = \"a\"\nfrom = \"paid\"\nwithin = \"2 fortnights\"\n")
            .unwrap_err();
        assert!(err.to_string().contains("line 4"), "{err}");
        assert!(err.to_string().contains("invalid duration"), "{err}");
    }
}

#[cfg(test)]
mod dispatch_tests {
    use super::*;

    fn user(text: &str) -> Result<Config, ConfigError> {
        Config::layered(Some(("test.toml".into(), text.into())))
    }

    const SINK: &str = "[[sinks]]\nname = \"erp\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:9/erp\"\nrate = \"20/min\"\n";

    #[test]
    fn a_configured_sink_activates_the_default_rules_that_use_it() {
        let config = user(SINK).unwrap();
        let inactive: Vec<String> = config
            .inactive_rules()
            .into_iter()
            .map(|(r, _)| r)
            .collect();
        assert!(!inactive.contains(&"erp_sales_order_on_paid".to_owned()));
        assert_eq!(inactive.len(), 3);
        let spec = &config.sink_specs()[0];
        assert_eq!(
            (spec.rate_count, spec.rate_per),
            (20, Duration::from_secs(60))
        );
        assert_eq!(spec.max_in_flight, 8);
    }

    #[test]
    fn sink_and_rule_errors_name_the_key() {
        let err = user(&SINK.replace("20/min", "lots")).unwrap_err();
        assert!(err.to_string().contains("invalid rate"), "{err}");
        let err = user(&SINK.replace("webhook", "carrier_pigeon")).unwrap_err();
        assert!(err.to_string().contains("carrier_pigeon"), "{err}");
        let rule = format!("{SINK}\n[[rules]]\nname = \"r\"\nwhen = \"true\"\nsync = \"wms\"\n");
        let err = user(&rule).unwrap_err();
        assert!(
            err.to_string()
                .contains("sink \"wms\", which is not configured"),
            "{err}"
        );
        let rule =
            format!("{SINK}\n[[rules]]\nname = \"r\"\nwhen = \"order.state ==\"\nsync = \"erp\"\n");
        let err = user(&rule).unwrap_err();
        assert!(
            err.to_string().contains("rules[0]: rule \"r\": when:"),
            "{err}"
        );
    }
}
