//! Configuration: serde structs with `deny_unknown_fields`, an embedded default, layering of a
//! user file over it (top-level keys replace), and validation that names the offending key and
//! its line.

mod locate;

use humantime::parse_duration;
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

/// `[sources.douyin]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DouyinConfig {
    /// Environment variable holding the app key.
    pub app_key_env: String,
    /// Environment variable holding the app secret.
    pub app_secret_env: String,
    /// Push tag → canonical status (`none` for informational).
    pub status_map: BTreeMap<String, String>,
}

/// `[sources.events]`: canonical events signed with Standard Webhooks.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsConfig {
    /// Environment variable holding the `whsec_…` secret.
    pub secret_env: String,
    /// Accepted clock difference of `webhook-timestamp`.
    pub tolerance: HumanDuration,
}

/// `[sources]`: every configured ingest source. A source left out is not served (404).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourcesConfig {
    /// Douyin Shop push.
    pub douyin: Option<DouyinConfig>,
    /// Canonical events.
    pub events: Option<EventsConfig>,
}

/// A configuration file: every top-level key optional, so a user file can set just a few.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    server: Option<ServerConfig>,
    journal: Option<JournalConfig>,
    actors: Option<ActorsConfig>,
    sla: Option<Vec<SlaConfig>>,
    allowed_sources: Option<BTreeMap<String, Vec<String>>>,
    sources: Option<SourcesConfig>,
}

/// Which file each top-level key came from, to point errors at the right line.
#[derive(Clone, Debug, Default)]
struct Origins {
    user_file: Option<(String, String)>,
    user_keys: Vec<&'static str>,
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
    /// `[sources]`.
    pub sources: SourcesConfig,
    origins: Origins,
}

fn parse_file(file: &str, text: &str) -> Result<ConfigFile, ConfigError> {
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

    /// Layers `user` (file name, text) over the embedded default and validates the result.
    pub fn layered(user: Option<(String, String)>) -> Result<Config, ConfigError> {
        let base = parse_file("<embedded default>", DEFAULT_CONFIG)?;
        let mut origins = Origins::default();
        let layer = match &user {
            Some((file, text)) => parse_file(file, text)?,
            None => ConfigFile::default(),
        };
        macro_rules! pick {
            ($field:ident) => {{
                if layer.$field.is_some() {
                    origins.user_keys.push(stringify!($field));
                }
                layer.$field.or(base.$field)
            }};
        }
        let missing = |key: &str| ConfigError::Invalid {
            file: "<embedded default>".into(),
            line: 0,
            key: key.into(),
            message: "missing".into(),
        };
        let server = pick!(server).ok_or_else(|| missing("server"))?;
        let journal = pick!(journal).ok_or_else(|| missing("journal"))?;
        let actors = pick!(actors).ok_or_else(|| missing("actors"))?;
        let sla = pick!(sla).unwrap_or_default();
        let allowed_sources = pick!(allowed_sources).unwrap_or_default();
        let sources = pick!(sources).unwrap_or_default();
        origins.user_file = user;
        let config = Config {
            server,
            journal,
            actors,
            sla,
            allowed_sources,
            sources,
            origins,
        };
        config.validate()?;
        Ok(config)
    }

    fn invalid(&self, key: String, message: impl Into<String>) -> ConfigError {
        let top = key.split(['.', '[']).next().unwrap_or_default();
        match &self.origins.user_file {
            Some((file, text)) if self.origins.user_keys.contains(&top) => ConfigError::Invalid {
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
        if let Some(douyin) = &self.sources.douyin {
            for (tag, status) in &douyin.status_map {
                if crate::ingest::parse_status(status).is_none() {
                    return Err(self.invalid(
                        format!("sources.douyin.status_map.{tag}"),
                        format!("unknown canonical status {status:?} (a state name, hold_released or none)"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The state machine's policy.
    pub fn policy(&self) -> OrderPolicy {
        let mut policy = OrderPolicy::permissive();
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
        assert_eq!(config.actors.shards, 16);
        assert!(config.sources.douyin.is_some() && config.sources.events.is_some());
    }

    #[test]
    fn a_user_key_replaces_the_default_key_whole() {
        let config = user("[[sla]]\nname = \"x\"\nfrom = \"paid\"\nwithin = \"1s\"\n").unwrap();
        assert_eq!(config.sla.len(), 1);
        assert_eq!(config.sla[0].within.0, Duration::from_secs(1));
        assert_eq!(config.actors.shards, 16, "untouched keys keep the default");
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
