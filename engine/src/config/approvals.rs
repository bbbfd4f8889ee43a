//! `[[approvals]]`: decisions people must take about an order within a deadline (an intercept
//! two approvers agree to within 20 minutes). The flows compile with the rules; this module
//! reads and checks what only the engine knows — roles, operators, sinks, cluster mode.

use super::{Config, ConfigError, HumanDuration, Role};
use orderhub_actors::order::{ApprovalActions, ApprovalSpec, OnTimeout};
use serde::Deserialize;

/// One `[[approvals]]` entry.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalConfig {
    /// Unique name (letters, digits, `_`, `-`, `.`): part of each approval's id.
    pub name: String,
    /// CEL over `order` and `event`, like rules: true for a report opens an approval.
    pub when: String,
    /// Distinct approvers needed.
    pub required: u32,
    /// The least role that may decide.
    pub role: Role,
    /// How long people have: a durable deadline, like an SLA timer.
    pub within: HumanDuration,
    /// What the deadline does: `escalate` (default), `reject` or `approve`.
    #[serde(default)]
    pub on_timeout: OnTimeout,
    /// A sink told when the deadline passes.
    #[serde(default)]
    pub escalate_to: Option<String>,
    /// What approving sends (`{ sync = [...], notify = "..." }`).
    #[serde(default)]
    pub on_approve: Option<ApprovalActions>,
    /// What rejecting sends.
    #[serde(default)]
    pub on_reject: Option<ApprovalActions>,
}

impl ApprovalConfig {
    /// The flow as the order fold uses it.
    pub fn spec(&self) -> ApprovalSpec {
        ApprovalSpec {
            name: self.name.clone(),
            when: self.when.clone(),
            required: self.required,
            role: self.role.as_str().to_owned(),
            within_ms: self.within.0.as_millis().min(i64::MAX as u128) as i64,
            on_timeout: self.on_timeout,
            escalate_to: self.escalate_to.clone(),
            on_approve: self.on_approve.clone(),
            on_reject: self.on_reject.clone(),
        }
    }

    /// The sinks the flow sends to.
    fn sinks(&self) -> impl Iterator<Item = &String> {
        self.escalate_to.iter().chain(
            [&self.on_approve, &self.on_reject]
                .into_iter()
                .flatten()
                .flat_map(|a| a.sync.iter().flatten().chain(a.notify.iter())),
        )
    }
}

impl Config {
    /// Checks `[[approvals]]`: single node only, a role that can act, enough operators of that
    /// role to reach `required`, sinks that exist. (Conditions and templates are checked
    /// when they compile with the rules.)
    pub(super) fn validate_approvals(&self) -> Result<(), ConfigError> {
        if self.approvals.is_empty() {
            return Ok(());
        }
        if self.cluster.is_some() {
            return Err(self.invalid(
                "approvals".into(),
                "approvals are not available in cluster mode yet (their decisions and deadlines \
                 are not owned per partition, so two nodes could decide one twice): remove \
                 [[approvals]] or run a single node",
            ));
        }
        for (i, approval) in self.approvals.iter().enumerate() {
            if approval.role == Role::Viewer {
                return Err(self.invalid(
                    format!("approvals[{i}].role"),
                    "a viewer cannot decide: operator, approver or admin",
                ));
            }
            let able = self
                .operators
                .iter()
                .filter(|o| o.role >= approval.role)
                .count();
            if (approval.required as usize) > able {
                return Err(self.invalid(
                    format!("approvals[{i}].required"),
                    format!(
                        "approval {:?} needs {} distinct deciders of role {} or above, but {} such \
                         operator{} configured in [[operators]]: it could never be approved",
                        approval.name,
                        approval.required,
                        approval.role.as_str(),
                        able,
                        if able == 1 { " is" } else { "s are" },
                    ),
                ));
            }
            if let Some(sink) = approval
                .sinks()
                .find(|sink| !self.sinks.iter().any(|s| &s.name == *sink))
            {
                return Err(self.invalid(
                    format!("approvals[{i}]"),
                    format!(
                        "approval {:?} sends to sink {sink:?}, which is not configured",
                        approval.name
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The approval flows as the order fold uses them.
    pub fn approval_specs(&self) -> Vec<ApprovalSpec> {
        self.approvals.iter().map(ApprovalConfig::spec).collect()
    }

    /// The least role that may decide approval flow `name` (`None`: no such flow).
    pub fn approval_role(&self, name: &str) -> Option<Role> {
        self.approvals
            .iter()
            .find(|a| a.name == name)
            .map(|a| a.role)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(text: &str) -> Result<Config, ConfigError> {
        Config::layered(Some(("test.toml".into(), text.into())))
    }

    const OPERATORS: &str = "\
        [[operators]]\nname = \"a\"\nrole = \"approver\"\ntoken_env = \"A\"\n\
        [[operators]]\nname = \"b\"\nrole = \"admin\"\ntoken_env = \"B\"\n\
        [[operators]]\nname = \"c\"\nrole = \"operator\"\ntoken_env = \"C\"\n";

    fn flow(extra: &str) -> String {
        format!(
            "{OPERATORS}[[sinks]]\nname = \"wms\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:1/wms\"\nrate = \"10/s\"\n\
             [[approvals]]\nname = \"intercept\"\nwhen = 'event.status == \"intercept_requested\"'\n\
             role = \"approver\"\nwithin = \"20m\"\n{extra}"
        )
    }

    fn message(err: ConfigError) -> String {
        err.to_string()
    }

    #[test]
    fn an_approval_flow_reads_with_its_defaults() {
        let config = user(&flow("required = 2\non_approve = { sync = [\"wms\"] }\n")).unwrap();
        let spec = &config.approval_specs()[0];
        assert_eq!(spec.required, 2);
        assert_eq!(spec.role, "approver");
        assert_eq!(spec.within_ms, 20 * 60 * 1000);
        assert_eq!(spec.on_timeout, OnTimeout::Escalate);
        assert_eq!(config.approval_role("intercept"), Some(Role::Approver));
        assert!(config.policy().rules().approval("intercept").is_some());
    }

    #[test]
    fn approval_flows_that_cannot_work_are_refused_naming_the_key() {
        // More approvers than there are operators of the role.
        let err = message(user(&flow("required = 3\n")).unwrap_err());
        assert!(err.contains("approvals[0].required"), "{err}");
        assert!(err.contains("2 such operators are configured"), "{err}");
        // Required keys.
        let err = message(user(&flow("")).unwrap_err());
        assert!(err.contains("required"), "{err}");
        // A viewer cannot decide.
        let err = message(
            user(
                &flow("required = 1\n")
                    .replace("role = \"approver\"\nwithin", "role = \"viewer\"\nwithin"),
            )
            .unwrap_err(),
        );
        assert!(err.contains("approvals[0].role"), "{err}");
        // A sink that is not configured.
        let err = message(user(&flow("required = 1\nescalate_to = \"wecom\"\n")).unwrap_err());
        assert!(err.contains("\"wecom\", which is not configured"), "{err}");
        // A condition that does not compile names the flow.
        let err = message(
            user(&flow("required = 1\n").replace("event.status ==", "event.status ==="))
                .unwrap_err(),
        );
        assert!(
            err.contains("approvals[0]") && err.contains("approval intercept"),
            "{err}"
        );
        // An unknown on_timeout, an unknown key.
        assert!(user(&flow("required = 1\non_timeout = \"ignore\"\n")).is_err());
        assert!(user(&flow("required = 1\nwho = \"x\"\n")).is_err());
        // Not in cluster mode (yet).
        let err = message(
            user(&flow(
                "required = 1\n[cluster]\nnats = [\"nats://127.0.0.1:4222\"]\nnode = \"n1\"\n",
            ))
            .unwrap_err(),
        );
        assert!(err.contains("cluster mode"), "{err}");
    }
}
