//! Warnings an operator can read under load: per-order warnings (an SLA breach, a hold, a retry,
//! a dead letter) are noted here instead of logged one line per order, and [`flush`] writes
//! one WARN line per kind and rule or sink with the count and a few example keys. The per-order
//! detail stays in the order's timeline and the metrics; a benchmark run that breached 11,719
//! SLAs logs one line per rule per interval instead of 11,719.

use dashmap::DashMap;
use std::sync::LazyLock;

/// Example keys kept per line.
const EXAMPLES: usize = 3;

/// What was noted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Warning {
    /// An SLA deadline passed (grouped by rule; late ones apart).
    SlaBreached {
        /// The deadline passed while the engine was down.
        late: bool,
    },
    /// A rule put an order on hold (grouped by rule).
    Held,
    /// A sync will be tried again (grouped by sink).
    Retried,
    /// A sync was given up on (grouped by sink).
    DeadLettered,
    /// Systems contradict each other about an order (grouped by kind).
    Disagreement,
    /// Ingest answered 503 because the journal (or, in cluster mode, JetStream) could not take
    /// an append (grouped by source; the examples are the errors).
    AppendFailed,
}

/// One line of a flush.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// What happened.
    pub warning: Warning,
    /// The rule or sink.
    pub group: String,
    /// How many times since the last flush.
    pub count: u64,
    /// The first few order keys (or sync ids).
    pub examples: Vec<String>,
}

#[derive(Default)]
struct Tally {
    count: u64,
    examples: Vec<String>,
}

/// Warnings noted since the last flush.
#[derive(Default)]
pub struct Digest {
    tallies: DashMap<(Warning, String), Tally>,
}

static DIGEST: LazyLock<Digest> = LazyLock::new(Digest::default);

/// Notes `warning` for `group` (a rule or sink) about `key` (an order or sync).
pub fn note(warning: Warning, group: &str, key: &str) {
    DIGEST.note(warning, group, key);
}

/// Writes one WARN line per warning and group noted since the last flush (nothing when there
/// was none); what it wrote.
pub fn flush(interval_s: u64) -> Vec<Summary> {
    let summaries = DIGEST.take();
    for s in &summaries {
        let examples = s.examples.join(", ");
        let count = s.count;
        let group = s.group.as_str();
        match s.warning {
            Warning::SlaBreached { late } => tracing::warn!(
                rule = group, count, late, examples = %examples, interval_s,
                "orders breached an SLA (each is in its timeline; orderhub_sla_breaches_total)"
            ),
            Warning::Held => tracing::warn!(
                rule = group, count, examples = %examples, interval_s,
                "orders put on hold by a rule: exception interception"
            ),
            Warning::Disagreement => tracing::warn!(
                kind = group, count, examples = %examples, interval_s,
                "systems contradict each other about orders (GET /v1/orders?disagreement=true)"
            ),
            Warning::Retried => tracing::warn!(
                sink = group, count, examples = %examples, interval_s,
                "syncs failed and will be retried"
            ),
            Warning::DeadLettered => tracing::warn!(
                sink = group, count, examples = %examples, interval_s,
                "syncs dead-lettered (GET /v1/dispatch/dead-letters)"
            ),
            Warning::AppendFailed => tracing::warn!(
                source = group, count, examples = %examples, interval_s,
                "pushes answered 503 with Retry-After: their events could not be journaled"
            ),
        }
    }
    summaries
}

impl Digest {
    fn note(&self, warning: Warning, group: &str, key: &str) {
        let mut tally = self.tallies.entry((warning, group.to_owned())).or_default();
        tally.count += 1;
        if tally.examples.len() < EXAMPLES {
            tally.examples.push(key.to_owned());
        }
    }

    /// Takes every tally, in a stable order.
    fn take(&self) -> Vec<Summary> {
        let keys: Vec<(Warning, String)> = self.tallies.iter().map(|e| e.key().clone()).collect();
        let mut summaries: Vec<Summary> = keys
            .into_iter()
            .filter_map(|key| self.tallies.remove(&key))
            .map(|((warning, group), tally)| Summary {
                warning,
                group,
                count: tally.count,
                examples: tally.examples,
            })
            .collect();
        summaries.sort_by(|a, b| (a.warning, &a.group).cmp(&(b.warning, &b.group)));
        summaries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn many_warnings_become_one_line_per_kind_and_group() {
        let digest = Digest::default();
        for i in 0..11_719 {
            digest.note(
                Warning::SlaBreached { late: false },
                "allocate_within_2h",
                &format!("douyin:{i}"),
            );
        }
        digest.note(
            Warning::SlaBreached { late: true },
            "allocate_within_2h",
            "douyin:x",
        );
        digest.note(Warning::DeadLettered, "erp", "douyin:1:3:erp");
        let lines = digest.take();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0].count, 11_719);
        assert_eq!(lines[0].examples, ["douyin:0", "douyin:1", "douyin:2"]);
        assert_eq!(lines[1].warning, Warning::SlaBreached { late: true });
        assert_eq!(lines[2].group, "erp");
        assert!(digest.take().is_empty(), "a flush starts a new interval");
    }
}
