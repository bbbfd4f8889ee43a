//! Partition snapshots in the `orderhub_snapshots` object store.
//!
//! Every `cluster.snapshot_every` a node writes, for each partition it holds whose position
//! moved since its last snapshot, the partition's part of its local journal: every event of the
//! partition's orders still in the journal (compaction archives finished ones), in journal
//! order, as gzip'd JSON lines, with the stream position they cover in the object's metadata.
//! The events and the position are read in one read transaction, and the applier commits a
//! chunk's events before the position, so a snapshot holds every event up to its position
//! (and perhaps a few after: duplicates, which the journal drops).
//!
//! A node taking a partition it never held (its journal has no position for it) restores the
//! partition from its snapshot — appends the events, commits the position — and consumes the
//! stream from just after it, instead of replaying the partition from the stream's start. So a
//! new owner's rebuild costs the partition's live orders, not its history, and the stream's
//! own retention (`max_age`) no longer decides what a new owner can know.

use super::{Inner, membership::position_key, partition_of};
use crate::journal::JournalError;
use async_nats::jetstream::object_store::{
    self, GetErrorKind, InfoErrorKind, ObjectMetadata, ObjectStore,
};
use flate2::Compression;
use flate2::write::GzEncoder;
use orderhub_actors::order::OrderEvent;
use orderhub_actors::telemetry as t;
use std::collections::HashMap;
use std::io::{BufRead, BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::sync::watch;

/// The object store of partition snapshots: object `p{n}` per partition.
pub const SNAPSHOTS_BUCKET: &str = "orderhub_snapshots";
/// The format a snapshot's metadata names (a node refuses one it cannot read).
const FORMAT: &str = "orderhub-partition-snapshot/1";
/// Where snapshots are staged before upload, inside the data directory.
const STAGING_DIR: &str = "cluster-snapshots";

/// The object holding `partition`'s snapshot.
pub(crate) fn object_name(partition: u32) -> String {
    format!("p{partition}")
}

/// A snapshot read back.
#[derive(Debug)]
pub(crate) struct Snapshot {
    /// The stream sequence every event up to which is in `events`.
    pub(crate) position: u64,
    /// The partition's events, in the writer's journal order.
    pub(crate) events: Vec<OrderEvent>,
    /// The node that wrote it.
    pub(crate) node: String,
}

/// Opens (creating if needed) the snapshots bucket.
pub(crate) async fn open_bucket(
    js: &async_nats::jetstream::Context,
    replicas: usize,
) -> Result<ObjectStore, super::ClusterError> {
    if let Ok(store) = js.get_object_store(SNAPSHOTS_BUCKET).await {
        return Ok(store);
    }
    let config = object_store::Config {
        bucket: SNAPSHOTS_BUCKET.to_owned(),
        description: Some("orderhub: the latest snapshot of each partition".to_owned()),
        storage: async_nats::jetstream::stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    };
    match js.create_object_store(config).await {
        Ok(store) => Ok(store),
        Err(e) => js.get_object_store(SNAPSHOTS_BUCKET).await.map_err(|_| {
            super::ClusterError::JetStream {
                what: format!("object store {SNAPSHOTS_BUCKET}"),
                reason: e.to_string(),
            }
        }),
    }
}

/// Writes snapshots of the partitions this node holds every `cluster.snapshot_every`, until
/// told to stop.
pub(super) async fn keep_writing(inner: Arc<Inner>, mut stopped: watch::Receiver<bool>) {
    let every = inner.config.snapshot_every.0;
    // Per partition, the position of the last snapshot this node wrote or found newer.
    let mut written: HashMap<u32, u64> = HashMap::new();
    loop {
        tokio::select! {
            _ = stopped.changed() => return,
            () = tokio::time::sleep(every) => {}
        }
        if *stopped.borrow() {
            return;
        }
        write_round(&inner, &mut written).await;
    }
}

/// One round: stage the snapshots of the held partitions that moved on (one scan of the
/// journal), then upload those still held.
async fn write_round(inner: &Arc<Inner>, written: &mut HashMap<u32, u64>) {
    let mut held: Vec<u32> = inner
        .owned
        .iter()
        .map(|entry| *entry.key())
        .filter(|partition| inner.holds(*partition))
        .collect();
    held.sort_unstable();
    if held.is_empty() {
        return;
    }
    let started = Instant::now();
    let staging = {
        let inner = inner.clone();
        let written = written.clone();
        tokio::task::spawn_blocking(move || stage(&inner, &held, &written))
            .await
            .unwrap_or_else(|e| Err(format!("staging panicked: {e}")))
    };
    let staged = match staging {
        Ok(staged) => staged,
        Err(err) => {
            metrics::counter!(t::CLUSTER_SNAPSHOTS, "outcome" => "failed").increment(1);
            tracing::warn!(error = %err, "cannot stage partition snapshots; next round tries again");
            return;
        }
    };
    let mut uploaded = 0usize;
    for file in staged {
        let outcome = if inner.holds(file.partition) {
            upload(&inner.snapshots, &inner.config.node, &file).await
        } else {
            Ok(Upload::Skipped)
        };
        let _ = std::fs::remove_file(&file.path);
        match outcome {
            Ok(Upload::Written) => {
                uploaded += 1;
                written.insert(file.partition, file.position);
                metrics::counter!(t::CLUSTER_SNAPSHOTS, "outcome" => "written").increment(1);
            }
            Ok(Upload::Newer(position)) => {
                written.insert(file.partition, position);
            }
            Ok(Upload::Skipped) => {}
            Err(err) => {
                metrics::counter!(t::CLUSTER_SNAPSHOTS, "outcome" => "failed").increment(1);
                tracing::warn!(partition = file.partition, error = %err, "cannot write a partition snapshot; next round tries again");
            }
        }
    }
    if uploaded > 0 {
        tracing::debug!(
            partitions = uploaded,
            took_ms = started.elapsed().as_millis() as u64,
            "partition snapshots written"
        );
    }
}

/// A snapshot staged on disk.
struct Staged {
    partition: u32,
    position: u64,
    events: u64,
    path: PathBuf,
}

/// Scans the journal once and writes, for each of `held` whose position moved past
/// `written`, its events to a gzip'd file in the staging directory.
fn stage(inner: &Inner, held: &[u32], written: &HashMap<u32, u64>) -> Result<Vec<Staged>, String> {
    let journal = &inner.journal;
    let partitions = inner.config.partitions;
    // A first look at the positions picks the partitions worth a snapshot; the scan reads
    // them again, in its own transaction, for the snapshots themselves.
    let mut wanted = Vec::new();
    for &partition in held {
        let position = journal
            .meta(&position_key(partition))
            .map_err(|e| e.to_string())?
            .unwrap_or(0)
            .max(0) as u64;
        if position > written.get(&partition).copied().unwrap_or(0) {
            wanted.push(partition);
        }
    }
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let dir = journal.dir().join(STAGING_DIR);
    let io = |path: &std::path::Path, e: std::io::Error| JournalError::DataDir {
        path: path.display().to_string(),
        source: e,
    };
    std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e).to_string())?;
    let mut files: HashMap<u32, (GzEncoder<BufWriter<std::fs::File>>, PathBuf, u64)> =
        HashMap::new();
    for &partition in &wanted {
        let path = dir.join(format!("{}.jsonl.gz", object_name(partition)));
        let file = std::fs::File::create(&path).map_err(|e| io(&path, e).to_string())?;
        let encoder = GzEncoder::new(BufWriter::new(file), Compression::fast());
        files.insert(partition, (encoder, path, 0));
    }
    let names: Vec<String> = wanted.iter().map(|p| position_key(*p)).collect();
    // Whatever fails below leaves no staged file behind.
    let discard = |files: &HashMap<u32, (GzEncoder<BufWriter<std::fs::File>>, PathBuf, u64)>| {
        for (_, path, _) in files.values() {
            let _ = std::fs::remove_file(path);
        }
    };
    let mut last_order = String::new();
    let mut last_partition = 0;
    let positions = journal
        .scan_events(&names, &mut |order, body| {
            if order != last_order {
                last_order.clear();
                last_order.push_str(order);
                last_partition = partition_of(order, partitions);
            }
            if let Some((encoder, path, count)) = files.get_mut(&last_partition) {
                encoder
                    .write_all(body.as_bytes())
                    .and_then(|()| encoder.write_all(b"\n"))
                    .map_err(|e| io(path, e))?;
                *count += 1;
            }
            Ok(())
        })
        .map_err(|e| {
            discard(&files);
            e.to_string()
        })?;
    let mut staged: Vec<Staged> = Vec::with_capacity(wanted.len());
    for (partition, position) in wanted.into_iter().zip(positions) {
        let Some((encoder, path, events)) = files.remove(&partition) else {
            continue;
        };
        let finished = encoder
            .finish()
            .and_then(|mut out| out.flush())
            .map_err(|e| io(&path, e).to_string());
        if let Err(err) = finished {
            let _ = std::fs::remove_file(&path);
            discard(&files);
            for done in &staged {
                let _ = std::fs::remove_file(&done.path);
            }
            return Err(err);
        }
        staged.push(Staged {
            partition,
            position: position.unwrap_or(0).max(0) as u64,
            events,
            path,
        });
    }
    Ok(staged)
}

/// What an upload did.
enum Upload {
    Written,
    /// The bucket already holds a snapshot at least this far along (another node wrote it).
    Newer(u64),
    Skipped,
}

/// Puts a staged snapshot, unless the bucket holds one at least as far along.
async fn upload(store: &ObjectStore, node: &str, file: &Staged) -> Result<Upload, String> {
    let name = object_name(file.partition);
    match store.info(&name).await {
        Ok(existing) => {
            if let Some(position) = position_of(&existing.metadata)
                && position >= file.position
            {
                return Ok(Upload::Newer(position));
            }
        }
        Err(e) if e.kind() == InfoErrorKind::NotFound => {}
        Err(e) => return Err(format!("reading {SNAPSHOTS_BUCKET}/{name}: {e}")),
    }
    let mut data = tokio::fs::File::open(&file.path)
        .await
        .map_err(|e| format!("{}: {e}", file.path.display()))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let meta = ObjectMetadata {
        name: name.clone(),
        description: Some(format!(
            "partition {} up to stream sequence {}",
            file.partition, file.position
        )),
        metadata: HashMap::from([
            ("format".to_owned(), FORMAT.to_owned()),
            ("partition".to_owned(), file.partition.to_string()),
            ("position".to_owned(), file.position.to_string()),
            ("events".to_owned(), file.events.to_string()),
            ("node".to_owned(), node.to_owned()),
            ("written_ms".to_owned(), now.as_millis().to_string()),
        ]),
        ..Default::default()
    };
    store
        .put(meta, &mut data)
        .await
        .map_err(|e| format!("writing {SNAPSHOTS_BUCKET}/{name}: {e}"))?;
    Ok(Upload::Written)
}

fn position_of(metadata: &HashMap<String, String>) -> Option<u64> {
    metadata.get("position")?.parse().ok()
}

/// `partition`'s snapshot, if the bucket has one: `Ok(None)` when there is none.
pub(crate) async fn fetch(
    store: &ObjectStore,
    partition: u32,
    partitions: u32,
) -> Result<Option<Snapshot>, String> {
    let name = object_name(partition);
    let mut object = match store.get(&name).await {
        Ok(object) => object,
        Err(e) if e.kind() == GetErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("reading {SNAPSHOTS_BUCKET}/{name}: {e}")),
    };
    let metadata = object.info().metadata.clone();
    if metadata.get("format").map(String::as_str) != Some(FORMAT) {
        return Err(format!(
            "{SNAPSHOTS_BUCKET}/{name} is not a snapshot this version reads (format {:?}, expected {FORMAT:?})",
            metadata.get("format")
        ));
    }
    let field = |key: &str| -> Result<u64, String> {
        metadata
            .get(key)
            .and_then(|value| value.parse().ok())
            .ok_or_else(|| {
                format!("{SNAPSHOTS_BUCKET}/{name}: metadata {key} is missing or not a number")
            })
    };
    let (position, expected) = (field("position")?, field("events")?);
    let node = metadata.get("node").cloned().unwrap_or_default();
    let mut compressed = Vec::with_capacity(object.info().size);
    // The object store checks the content against its digest at the end.
    object
        .read_to_end(&mut compressed)
        .await
        .map_err(|e| format!("reading {SNAPSHOTS_BUCKET}/{name}: {e}"))?;
    let decoded = tokio::task::spawn_blocking(move || decode(&compressed, partition, partitions))
        .await
        .map_err(|e| e.to_string())?;
    let events = decoded.map_err(|e| format!("{SNAPSHOTS_BUCKET}/{name}: {e}"))?;
    if events.len() as u64 != expected {
        return Err(format!(
            "{SNAPSHOTS_BUCKET}/{name} holds {} events, its metadata says {expected}",
            events.len()
        ));
    }
    Ok(Some(Snapshot {
        position,
        events,
        node,
    }))
}

/// The events of a snapshot's gzip'd JSON lines, each checked to belong to `partition`.
fn decode(compressed: &[u8], partition: u32, partitions: u32) -> Result<Vec<OrderEvent>, String> {
    let reader = std::io::BufReader::new(flate2::read::GzDecoder::new(compressed));
    let mut events = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line.map_err(|e| format!("line {}: {e}", i + 1))?;
        let event: OrderEvent =
            serde_json::from_str(&line).map_err(|e| format!("line {}: {e}", i + 1))?;
        if partition_of(&event.order, partitions) != partition {
            return Err(format!(
                "line {}: order {} is not in partition {partition}",
                i + 1,
                event.order
            ));
        }
        events.push(event);
    }
    Ok(events)
}

/// How long a node waits before trying a snapshot again after a failed read.
pub(crate) const RETRY_AFTER: Duration = Duration::from_millis(500);
/// Failed reads of a snapshot before the partition is replayed from the stream instead.
pub(crate) const ATTEMPTS: usize = 3;

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;

    fn gz(text: &str) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
        encoder.write_all(text.as_bytes()).unwrap();
        encoder.finish().unwrap()
    }

    fn event_line(order: &str, id: &str) -> String {
        let mut event = OrderEvent::internal(
            order,
            id.to_owned(),
            orderhub_actors::order::EventAction::Inform,
            1,
        );
        event.log_seq = Some(7);
        serde_json::to_string(&event).unwrap()
    }

    #[test]
    fn a_snapshot_decodes_to_its_events_and_refuses_another_partitions_order() {
        let partitions = 8;
        let orders: Vec<String> = (0..40).map(|i| format!("shop:{i}")).collect();
        let partition = partition_of(&orders[0], partitions);
        let mine: Vec<&String> = orders
            .iter()
            .filter(|o| partition_of(o, partitions) == partition)
            .collect();
        let text: String = mine
            .iter()
            .enumerate()
            .map(|(i, o)| event_line(o, &format!("e{i}")) + "\n")
            .collect();
        let events = decode(&gz(&text), partition, partitions).unwrap();
        assert_eq!(events.len(), mine.len());
        assert_eq!(events[0].order, *mine[0]);
        assert_eq!(events[0].log_seq, Some(7));

        let other = orders
            .iter()
            .find(|o| partition_of(o, partitions) != partition)
            .unwrap();
        let error = decode(
            &gz(&(text + &event_line(other, "x") + "\n")),
            partition,
            partitions,
        )
        .unwrap_err();
        assert!(error.contains("is not in partition"), "{error}");
        let error = decode(&gz("{not json\n"), partition, partitions).unwrap_err();
        assert!(error.starts_with("line 1:"), "{error}");
        assert!(decode(b"not gzip", partition, partitions).is_err());
    }
}
