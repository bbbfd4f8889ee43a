//! Messages of a correctly signed batch that could not be used: recorded (counted, the latest
//! kept with their error and an excerpt) instead of failing the batch's other messages, and
//! listed by `GET /v1/sources`. Kept in memory: the counter `orderhub_ingest_events_total
//! {outcome="rejected"}` is the durable record; this is where an operator reads what was wrong.

use super::Rejected;
use dashmap::DashMap;
use orderhub_actors::order::Millis;
use std::collections::VecDeque;

/// Rejected messages kept per source.
const KEEP_PER_SOURCE: usize = 20;
/// Bytes of the body kept with each (enough to find the message on the platform's side).
const EXCERPT_BYTES: usize = 512;

/// One rejected message.
#[derive(Clone, Debug, serde::Serialize)]
pub(crate) struct RejectedMessage {
    /// Hub time it was received.
    pub(crate) received_at: Millis,
    /// Its position in the body.
    pub(crate) index: usize,
    /// The error code (`malformed`, …).
    pub(crate) code: &'static str,
    /// What was wrong.
    pub(crate) error: String,
    /// The start of the request body, lossily as text.
    pub(crate) excerpt: String,
}

/// One source's record.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub(crate) struct SourceRejections {
    /// Messages rejected since start-up.
    pub(crate) total: u64,
    /// The latest, newest first.
    pub(crate) recent: VecDeque<RejectedMessage>,
}

/// Rejected messages per source.
#[derive(Default)]
pub(crate) struct Rejections {
    by_source: DashMap<&'static str, SourceRejections>,
}

impl Rejections {
    /// Records the `rejected` messages of `body`, received by `source` at `received_at`.
    pub(crate) fn record(
        &self,
        source: &'static str,
        received_at: Millis,
        body: &[u8],
        rejected: &[Rejected],
    ) {
        if rejected.is_empty() {
            return;
        }
        let cut = body.len().min(EXCERPT_BYTES);
        let excerpt = String::from_utf8_lossy(&body[..cut]).into_owned();
        let mut entry = self.by_source.entry(source).or_default();
        for reject in rejected {
            tracing::warn!(source, index = reject.index, error = %reject.error, "message of a batch rejected; the others were accepted");
            entry.total += 1;
            entry.recent.push_front(RejectedMessage {
                received_at,
                index: reject.index,
                code: reject.error.kind(),
                error: reject.error.to_string(),
                excerpt: excerpt.clone(),
            });
            entry.recent.truncate(KEEP_PER_SOURCE);
        }
    }

    /// A copy of `source`'s record (empty when nothing was rejected).
    pub(crate) fn of(&self, source: &str) -> SourceRejections {
        self.by_source
            .get(source)
            .map(|entry| entry.clone())
            .unwrap_or_default()
    }
}
