//! The source registry: every kind of source orderhub speaks, listed once in [`PLUGINS`].
//!
//! A kind of source is a plug-in that owns everything about itself in its own file: its
//! `[sources.KIND]` config struct (`deny_unknown_fields`), the checks of its values, its status
//! tables and its adapter (an HTTP push), channel client or poller. The root config keeps the
//! tables as written; [`Sources::configure`] hands each to its plug-in and turns a plug-in's
//! complaint into the same error `check-config` gives for any key: file, line, key, message.
//!
//! Adding a source is one file beside the others implementing [`SourcePlugin`], one line in
//! [`PLUGINS`], its default table in `config/default.toml` (or none: configured by users), its
//! tests and its section in docs/sources.md.

use super::{SecretLookup, SourceEntry, StatusTable};
use crate::AppState;
use crate::config::{Config, ConfigError, HumanDuration};
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// What a plug-in says is wrong: the dotted key (from the config's root) and why.
pub(crate) type Issue = (String, String);

/// Builds a push source's adapter once its secrets can be read.
pub(crate) type BuildAdapter = Box<dyn Fn(&SecretLookup) -> SourceEntry + Send + Sync>;

/// Starts a connected or polled source as an engine task; `Err` says why it did not start (a
/// missing credential names its variable).
pub(crate) type StartTask =
    Box<dyn Fn(&Arc<AppState>, &SecretLookup) -> Result<JoinHandle<()>, String> + Send + Sync>;

/// One configured source.
pub(crate) enum Configured {
    /// Pushes over HTTP to `POST /v1/ingest/{name}`.
    Push {
        /// Route segment and metric label.
        name: &'static str,
        /// Its adapter.
        build: BuildAdapter,
    },
    /// Order-detail enrichment of a channel (`[sources.CHANNEL.details]`).
    Details(Box<super::details::DetailsPlan>),
    /// The engine connects to it or polls it.
    Task {
        /// Metric label and the `source` of its events.
        name: &'static str,
        /// Its task.
        start: StartTask,
    },
}

impl Configured {
    /// A push source whose adapter `build` makes from `config` once secrets can be read.
    pub(crate) fn push<C: Send + Sync + 'static>(
        name: &'static str,
        config: C,
        build: fn(&C, &SecretLookup) -> SourceEntry,
    ) -> Self {
        Configured::Push {
            name,
            build: Box::new(move |secrets| build(&config, secrets)),
        }
    }

    /// A channel the engine keeps connected, made by `build` from `config`.
    pub(crate) fn connection<C, K>(
        name: &'static str,
        config: C,
        build: fn(&C, &SecretLookup) -> Result<K, String>,
    ) -> Self
    where
        C: Send + Sync + 'static,
        K: super::connection::Connection,
    {
        Configured::Task {
            name,
            start: Box::new(move |app, secrets| {
                let channel = build(&config, secrets)?;
                Ok(tokio::spawn(super::connection::keep_connected(
                    channel,
                    app.clone(),
                )))
            }),
        }
    }

    pub(crate) fn name(&self) -> &'static str {
        match self {
            Configured::Push { name, .. } | Configured::Task { name, .. } => name,
            Configured::Details(plan) => plan.api,
        }
    }
}

/// A kind of source.
pub(crate) trait SourcePlugin: Sync {
    /// Its key under `[sources]` (for a single source, also its name).
    fn key(&self) -> &'static str;
    /// Parses and checks its table (`[sources.KEY]`); the sources it configures.
    fn configure(&self, table: toml::Value) -> Result<Vec<Configured>, Issue>;
}

/// Every kind of source: the one list.
pub(crate) const PLUGINS: [&dyn SourcePlugin; 10] = [
    &super::douyin::Plugin,
    &super::youzan::Plugin,
    &super::kuaishou::Plugin,
    &super::wechat::Plugin,
    &super::sf::Plugin,
    &super::events::Plugin,
    &super::generic::Plugin,
    &super::pdd::Plugin,
    &super::tmc::Plugin,
    &super::wdt::Plugin,
];

/// Names a configured source may not take: the built-in kinds' names.
pub(crate) fn reserved(name: &str) -> bool {
    PLUGINS.iter().any(|plugin| plugin.key() == name)
}

/// Deserializes `[path]` (a `deny_unknown_fields` struct); the error names the key.
pub(crate) fn parse<T: DeserializeOwned>(path: &str, table: toml::Value) -> Result<T, Issue> {
    table.try_into().map_err(|e: toml::de::Error| {
        let message = e.message().trim_end().to_owned();
        let key = match message.split('`').nth(1) {
            Some(field) if message.starts_with("unknown field") => format!("{path}.{field}"),
            _ => path.to_owned(),
        };
        (key, message)
    })
}

/// Parses the status table at `[path]`, refusing a value that is no canonical status.
pub(crate) fn statuses(path: &str, table: &BTreeMap<String, String>) -> Result<StatusTable, Issue> {
    for (raw, status) in table {
        if super::parse_status(status).is_none() {
            return Err((
                format!("{path}.{raw}"),
                format!(
                    "unknown canonical status {status:?} (a state name, hold_released or none)"
                ),
            ));
        }
    }
    Ok(StatusTable::new(table))
}

/// The table without its `enabled` key, or `None` when it says `enabled = false` (a default
/// source a user does not want, since tables merge into the defaults key by key).
fn enabled(path: &str, table: &toml::Value) -> Result<Option<toml::Value>, Issue> {
    let mut table = table.clone();
    let flag = match &mut table {
        toml::Value::Table(fields) => fields.remove("enabled"),
        _ => None,
    };
    match flag {
        None | Some(toml::Value::Boolean(true)) => Ok(Some(table)),
        Some(toml::Value::Boolean(false)) => Ok(None),
        Some(other) => Err((
            format!("{path}.enabled"),
            format!("must be true or false, got {other}"),
        )),
    }
}

/// The default clock tolerance of signed requests (Standard Webhooks' five minutes).
pub(crate) fn default_tolerance() -> HumanDuration {
    HumanDuration(Duration::from_secs(300))
}

/// The configured sources.
pub struct Sources {
    configured: Vec<Configured>,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

impl Sources {
    /// Hands every `[sources.KIND]` and `[pollers.NAME]` table of `config` to its plug-in; the
    /// first complaint as a config error naming the key and its line.
    pub fn configure(config: &Config) -> Result<Sources, ConfigError> {
        let mut configured = Vec::new();
        for (key, table) in &config.sources {
            let Some(table) = enabled(&format!("sources.{key}"), table)
                .map_err(|(key, message)| config.invalid(key, message))?
            else {
                continue;
            };
            let plugin = PLUGINS
                .iter()
                .find(|plugin| plugin.key() == key)
                .ok_or_else(|| {
                    let known: Vec<&str> = PLUGINS.iter().map(|p| p.key()).collect();
                    config.invalid(
                        format!("sources.{key}"),
                        format!(
                            "unknown kind of source {key:?} (one of {})",
                            known.join(", ")
                        ),
                    )
                })?;
            let these = plugin
                .configure(table)
                .map_err(|(key, message)| config.invalid(key, message))?;
            configured.extend(these);
        }
        for (name, table) in &config.pollers {
            let Some(table) = enabled(&format!("pollers.{name}"), table)
                .map_err(|(key, message)| config.invalid(key, message))?
            else {
                continue;
            };
            let poller = super::poll::configure(name, table)
                .map_err(|(key, message)| config.invalid(key, message))?;
            configured.extend(poller);
        }
        for plan in configured.iter().filter_map(|c| match c {
            Configured::Details(plan) => Some(plan),
            _ => None,
        }) {
            if config.cluster.is_some() && plan.config.refresh_token_env.is_some() {
                return Err(config.invalid(
                    format!("sources.{}.details.refresh_token_env", plan.channel),
                    "a refresh token rotates when used: cluster nodes refreshing on their own would kill each other's (sharing one token between nodes is not built yet); give access_token_env, or run a single node",
                ));
            }
            if let Some(index) = config.sinks.iter().position(|s| s.name == plan.api) {
                return Err(config.invalid(
                    format!("sinks[{index}].name"),
                    format!(
                        "{:?} is the name of {}'s order-detail fetches",
                        plan.api, plan.channel
                    ),
                ));
            }
        }
        // A poller signing with its channel's client needs that channel's details table.
        for (name, table) in &config.pollers {
            let text = |key: &str| table.get(key).and_then(toml::Value::as_str);
            if text("sign") == Some("channel")
                && table.get("enabled") != Some(&toml::Value::Boolean(false))
            {
                let channel = text("channel").unwrap_or_default();
                let enriched = configured
                    .iter()
                    .any(|c| matches!(c, Configured::Details(plan) if plan.channel == channel));
                if !enriched {
                    return Err(config.invalid(
                        format!("pollers.{name}.sign"),
                        format!("\"channel\" signs with the channel's own client: configure [sources.{channel}.details] (its credentials and quota)"),
                    ));
                }
            }
        }
        Ok(Sources { configured })
    }

    /// Every configured source's name (pushed, connected and polled).
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.configured
            .iter()
            .filter(|c| !matches!(c, Configured::Details(_)))
            .map(Configured::name)
    }

    /// Takes the channels' order-detail plans out (they are built once, by the engine).
    pub(crate) fn take_details(&mut self) -> Vec<super::details::DetailsPlan> {
        let (details, rest) = std::mem::take(&mut self.configured)
            .into_iter()
            .partition(|c| matches!(c, Configured::Details(_)));
        self.configured = rest;
        details
            .into_iter()
            .filter_map(|c| match c {
                Configured::Details(plan) => Some(*plan),
                _ => None,
            })
            .collect()
    }

    /// The push sources.
    pub(crate) fn pushed(&self) -> impl Iterator<Item = (&'static str, &BuildAdapter)> {
        self.configured.iter().filter_map(|c| match c {
            Configured::Push { name, build } => Some((*name, build)),
            Configured::Task { .. } | Configured::Details(_) => None,
        })
    }

    /// The connected and polled sources.
    pub(crate) fn tasks(&self) -> impl Iterator<Item = (&'static str, &StartTask)> {
        self.configured.iter().filter_map(|c| match c {
            Configured::Task { name, start } => Some((*name, start)),
            Configured::Push { .. } | Configured::Details(_) => None,
        })
    }
}

/// Parses the embedded default's `[sources.KEY]` table as `T` (for tests and fuzzing).
pub(crate) fn default_config<T: DeserializeOwned>(key: &str) -> T {
    let config = Config::embedded().expect("the embedded default is valid");
    parse(&format!("sources.{key}"), config.sources[key].clone()).expect("the default parses")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configure(text: &str) -> Result<Sources, ConfigError> {
        let config = Config::layered(Some(("test.toml".into(), text.into()))).unwrap();
        Sources::configure(&config)
    }

    #[test]
    fn the_default_configures_every_built_in_source() {
        let sources = Sources::configure(&Config::embedded().unwrap()).unwrap();
        let mut names: Vec<&str> = sources.names().collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "douyin", "events", "kuaishou", "pdd", "sf", "taobao", "wdt", "wechat", "youzan"
            ]
        );
        assert_eq!(sources.tasks().count(), 3, "pdd, taobao and wdt are tasks");
    }

    #[test]
    fn a_plug_ins_complaint_names_the_key_and_its_line() {
        let err = configure("[sources.douyin]\napp_key_env = \"K\"\napp_secret_env = \"S\"\nlissen = 1\n[sources.douyin.status_map]\n")
            .unwrap_err();
        assert_eq!(err.kind(), "invalid");
        let text = err.to_string();
        assert!(
            text.starts_with("test.toml line 4: sources.douyin.lissen:"),
            "{text}"
        );
        let err = configure(
            "[sources.youzan]\nclient_id_env = \"I\"\nclient_secret_env = \"S\"\n[sources.youzan.status_map]\nWAIT = \"shiped\"\n",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "test.toml line 5: sources.youzan.status_map.WAIT: unknown canonical status \"shiped\" (a state name, hold_released or none)"
        );
        let err = configure("[sources.telegraph]\nurl = \"x\"\n").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("test.toml line 1: sources.telegraph: unknown kind of source"),
            "{err}"
        );
        let err =
            configure("[sources.sf]\nallow_from = [\"10.0.0.0/33\"]\n[sources.sf.opcode_map]\n")
                .unwrap_err();
        assert!(
            err.to_string().contains("sources.sf.allow_from[0]"),
            "{err}"
        );
    }

    #[test]
    fn a_user_table_merges_into_the_default_and_enabled_false_turns_a_source_off() {
        // Setting one key of one source keeps the others and every other default source.
        let sources = configure("[sources.douyin.status_map]\n\"999\" = \"none\"\n").unwrap();
        assert_eq!(sources.names().count(), 9);
        let sources =
            configure("[sources.tmc]\nenabled = false\n[sources.wdt]\nenabled = false\n").unwrap();
        assert!(!sources.names().any(|n| n == "taobao" || n == "wdt"));
        assert_eq!(sources.tasks().count(), 1, "pdd only");
        let err = configure("[sources.pdd]\nenabled = \"no\"\n").unwrap_err();
        assert!(err.to_string().contains("sources.pdd.enabled"), "{err}");
    }

    #[test]
    fn a_details_table_is_checked_by_its_channel() {
        let mut sources =
            configure("[sources.douyin.details]\nshop_id_env = \"SHOP\"\nrate = \"5/s\"\n")
                .unwrap();
        let plans = sources.take_details();
        assert_eq!(plans.len(), 1);
        assert_eq!(plans[0].api, "douyin_api");
        assert_eq!(plans[0].sink_spec().rate_count, 5);
        assert_eq!(plans[0].spec().refetch_on, ["105", "109", "111"]);
        assert_eq!(
            sources.names().count(),
            9,
            "the plan is no source of its own"
        );
        let err = configure("[sources.douyin.details]\nsign_secret_env = \"S\"\n").unwrap_err();
        assert!(
            err.to_string()
                .contains("sources.douyin.details.sign_secret_env: not used by this channel"),
            "{err}"
        );
        let err = configure("[sources.douyin.details]\ngateway = \"ftp://x\"\n").unwrap_err();
        assert!(
            err.to_string().contains("sources.douyin.details.gateway"),
            "{err}"
        );
        let err = configure("[sources.kuaishou.details]\nsign_method = \"SHA1\"\n").unwrap_err();
        assert!(
            err.to_string()
                .contains("sources.kuaishou.details.sign_method"),
            "{err}"
        );
        let err = configure(
            "[sources.douyin.details]\nshop_id_env = \"SHOP\"\n[[sinks]]\nname = \"douyin_api\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:1\"\nrate = \"1/s\"\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("sinks[0].name"), "{err}");
        // Cluster mode runs enrichment too (the fetches are syncs of the partition's owner).
        let mut clustered = configure(
            "[sources.youzan.details]\nshop_id_env = \"KDT\"\n[cluster]\nnats = [\"nats://127.0.0.1:4222\"]\nnode = \"a\"\n",
        )
        .unwrap();
        assert_eq!(clustered.take_details().len(), 1);
        let err = configure(
            "[sources.kuaishou.details]\nsign_secret_env = \"S\"\napp_secret_env = \"A\"\nrefresh_token_env = \"R\"\n[cluster]\nnats = [\"nats://127.0.0.1:4222\"]\nnode = \"a\"\n",
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("sources.kuaishou.details.refresh_token_env"),
            "{err}"
        );
    }

    #[test]
    fn a_poller_signing_with_its_channel_needs_the_channels_details() {
        let poller = "[pollers.dy]\nsource = \"douyin\"\nchannel = \"douyin\"\nevery = \"1m\"\noverlap = \"1m\"\nlookback = \"1h\"\nsign = \"channel\"\nmethod = \"order.searchList\"\nwindow_start_param = \"a\"\nwindow_end_param = \"b\"\ntime_format = \"unix_s\"\npage_param = \"page\"\npage_size_param = \"size\"\npage_size = 100\nitems_path = \"/l\"\norder_path = \"/o\"\nstatus_path = \"/s\"\n[pollers.dy.status_map]\n";
        let err = configure(poller).unwrap_err();
        assert!(err.to_string().contains("pollers.dy.sign"), "{err}");
        assert!(
            err.to_string().contains("[sources.douyin.details]"),
            "{err}"
        );
        let sources = configure(&format!(
            "[sources.douyin.details]\nshop_id_env = \"S\"\n{poller}"
        ))
        .unwrap();
        assert!(sources.names().any(|n| n == "douyin"));
        let err = configure(&format!(
            "[sources.douyin.details]\nshop_id_env = \"S\"\n{}",
            poller.replace(
                "sign = \"channel\"",
                "sign = \"channel\"\nurl = \"http://x\""
            )
        ))
        .unwrap_err();
        assert!(err.to_string().contains("pollers.dy.url"), "{err}");
        let err = configure("[sources.youzan.details]\nshop_id_env = \"K\"\ndecrypt = true\n")
            .unwrap_err();
        assert!(
            err.to_string().contains("sources.youzan.details.decrypt"),
            "{err}"
        );
    }

    #[test]
    fn a_generic_source_may_not_take_a_built_in_name() {
        let err = configure(
            "[sources.generic.douyin]\nsecret_env = \"S\"\nchannel = \"c\"\norder_path = \"/o\"\nstatus_path = \"/s\"\n[sources.generic.douyin.status_map]\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("built-in"), "{err}");
    }
}
