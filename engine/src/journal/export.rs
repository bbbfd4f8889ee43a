//! `orderhub export`: a journal's events as gzip'd JSON lines — the format capacity rehearsals
//! replay (`loadgen replay`) and archives share. One line per event in journal order:
//! `{"order", "source", "source_event_id", "status", "raw_status", "occurred_at", "received_at",
//! "fields"}` (`status` is the canonical meaning: a state name, `hold_released` or `none`;
//! `"unmapped": true` when the source's table did not know `raw_status`). orderhub's own events
//! (SLA breaches) are left out: a replay's engine decides those itself.
//!
//! Orders compaction archived are read from the archive files (`journal.archive_dir`) too:
//! their events come first, each archived order's events together and in journal order, then
//! the journal's.

use super::{JournalError, schema};
use flate2::Compression;
use flate2::write::GzEncoder;
use orderhub_actors::order::{EventAction, INTERNAL_SOURCE, Millis, OrderEvent};
use std::io::Write;
use std::path::Path;

/// One exported event.
#[derive(Debug, serde::Serialize)]
struct Line<'a> {
    order: &'a str,
    source: &'a str,
    source_event_id: &'a str,
    status: &'a str,
    raw_status: &'a str,
    occurred_at: Millis,
    received_at: Millis,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    unmapped: bool,
    #[serde(skip_serializing_if = "orderhub_actors::order::Fields::is_empty")]
    fields: &'a orderhub_actors::order::Fields,
}

/// Writes the events received in `[from, to)` (hub time, ms) from the archive files in
/// `archive_dir` (if any) and the journal in `data_dir` to `out` (gzip'd JSON lines,
/// fsync'd); the number written.
pub fn export(
    data_dir: &Path,
    archive_dir: Option<&Path>,
    from: Millis,
    to: Millis,
    out: &Path,
) -> Result<u64, JournalError> {
    let conn = schema::open_reader(data_dir)?;
    let file = std::fs::File::create(out).map_err(|source| JournalError::DataDir {
        path: out.display().to_string(),
        source,
    })?;
    let mut gz = GzEncoder::new(std::io::BufWriter::new(file), Compression::default());
    let io = |source: std::io::Error| JournalError::DataDir {
        path: out.display().to_string(),
        source,
    };
    let mut written = 0u64;
    let mut write = |event: &OrderEvent| -> Result<(), JournalError> {
        if event.source == INTERNAL_SOURCE || event.received_at < from || event.received_at >= to {
            return Ok(());
        }
        let line = Line {
            order: &event.order,
            source: &event.source,
            source_event_id: &event.source_event_id,
            status: event.action.label(),
            raw_status: &event.raw_status,
            occurred_at: event.occurred_at,
            received_at: event.received_at,
            unmapped: event.action == EventAction::Unmapped,
            fields: &event.fields,
        };
        serde_json::to_writer(&mut gz, &line).map_err(|e| io(e.into()))?;
        gz.write_all(b"\n").map_err(io)?;
        written += 1;
        Ok(())
    };
    if let Some(dir) = archive_dir {
        let intent = super::writer::read_intent(&conn)?;
        for event in super::retention::archived_events(dir, from, intent)? {
            write(&event?)?;
        }
    }
    let mut stmt = conn.prepare(&format!(
        "SELECT seq, {} FROM events WHERE received_at >= ?1 AND received_at < ?2 ORDER BY seq",
        super::schema::whole_body(&conn)?
    ))?;
    let mut rows = stmt.query([from, to])?;
    while let Some(row) = rows.next()? {
        let seq: i64 = row.get(0)?;
        let body = row
            .get_ref(1)?
            .as_str_or_null()
            .map_err(rusqlite::Error::from)?;
        let body = super::schema::whole_or_named(seq, body)?;
        let event: OrderEvent = serde_json::from_str(body).map_err(|e| JournalError::Corrupt {
            seq: seq as u64,
            reason: e.to_string(),
        })?;
        write(&event)?;
    }
    let file = gz
        .finish()
        .map_err(io)?
        .into_inner()
        .map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::journal::Journal;
    use orderhub_actors::order::{OrderPolicy, OrderState};
    use std::io::Read;

    fn event(id: &str, action: EventAction, at: Millis) -> OrderEvent {
        OrderEvent {
            order: "douyin:1".into(),
            source: "douyin".into(),
            source_event_id: id.into(),
            supersedes: None,
            log_seq: None,
            raw_status: id.into(),
            action,
            occurred_at: at,
            received_at: at,
            fields: Default::default(),
        }
    }

    #[tokio::test]
    async fn events_in_the_window_are_written_as_gzipped_json_lines() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::embedded().unwrap().journal;
        let (journal, _) = Journal::open(dir.path(), &config, &OrderPolicy::permissive()).unwrap();
        journal.start(|_, _| {}, |_| {}).unwrap();
        let paid = EventAction::Move {
            state: OrderState::Paid,
        };
        let mut internal = event("breach", EventAction::Inform, 2_000);
        internal.source = INTERNAL_SOURCE.into();
        journal
            .append(vec![
                event("before", paid.clone(), 500),
                event("101", paid, 1_000),
                event("999", EventAction::Unmapped, 1_500),
                internal,
                event("after", EventAction::Inform, 9_000),
            ])
            .await
            .unwrap();
        journal.close().await;
        let out = dir.path().join("export.jsonl.gz");
        assert_eq!(export(dir.path(), None, 1_000, 5_000, &out).unwrap(), 2);
        let mut text = String::new();
        flate2::read::GzDecoder::new(std::fs::File::open(&out).unwrap())
            .read_to_string(&mut text)
            .unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["status"], "paid");
        assert_eq!(lines[0]["raw_status"], "101");
        assert_eq!(lines[0]["received_at"], 1_000);
        assert_eq!(lines[1]["status"], "none");
        assert_eq!(lines[1]["unmapped"], true);
    }
}
