//! The threads that read cold orders for actors starting on them ([`OrderStore::load_later`]).
//!
//! An order actor that starts on an order it does not hold in memory (a restart, an order
//! passivated for being idle or evicted when its shard was full, a timer) folds the order's
//! journal before its first message. A new order's first event reads nothing: the writer knew
//! the journal held no earlier event of it ([`OrderRouter::route_first`]). Read on a runtime worker, that SQLite read would
//! hold the worker — one of two on a small box — and, done while the shard waits for the actor
//! to start, the whole shard. Here a few threads of the journal's own do it: the shard goes on
//! starting and feeding other orders, the workers go on serving requests, and when a flash sale
//! brings many cold orders at once (or the journal's pages are not in the page cache) the reads
//! overlap instead of queueing behind each other. A loader that finds more requests waiting
//! takes them one after the other without sleeping, so a burst costs no wake-up per order.
//!
//! [`OrderStore::load_later`]: orderhub_actors::store::OrderStore::load_later
//! [`OrderRouter::route_first`]: orderhub_actors::shard::OrderRouter::route_first

use super::reader::{self, ReadPool};
use super::recovery::panic_message;
use super::{JournalError, store_error};
use crossbeam_channel::{Receiver, Sender, unbounded};
use orderhub_actors::store::{LoadReply, StoreError, StoredOrder};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

/// Loader threads. Reads that hit the page cache are CPU-bound and two cores run at most two of
/// them at once; the others overlap reads that wait for the disk.
pub(crate) const LOADERS: usize = 4;

/// One order to load and where to answer.
pub(crate) struct LoadRequest {
    pub(crate) order: String,
    pub(crate) reply: LoadReply,
}

/// The loader threads' queue. The threads stop when it is dropped (with the journal).
pub(crate) struct Loaders {
    requests: Sender<LoadRequest>,
}

impl Loaders {
    /// Starts `threads` loaders reading through `reader`.
    pub(crate) fn start(reader: Arc<ReadPool>, threads: usize) -> Result<Loaders, JournalError> {
        let (requests, queue) = unbounded();
        for _ in 0..threads.max(1) {
            let reader = reader.clone();
            let queue: Receiver<LoadRequest> = queue.clone();
            std::thread::Builder::new()
                .name("journal-loader".into())
                .spawn(move || serve(&reader, &queue))
                .map_err(|source| JournalError::DataDir {
                    path: "journal-loader thread".into(),
                    source,
                })?;
        }
        Ok(Loaders { requests })
    }

    /// Queues `request`; gives it back if no loader is left to take it.
    pub(crate) fn submit(&self, request: LoadRequest) -> Result<(), LoadRequest> {
        self.requests.send(request).map_err(|e| e.into_inner())
    }
}

/// An order's journaled events and the position of its stored summary (two indexed reads; a
/// summary written between them is at most newer than the events, which replay tolerates).
pub(crate) fn load(reader: &ReadPool, order: &str) -> Result<StoredOrder, StoreError> {
    reader
        .with(|conn| {
            Ok(StoredOrder {
                events: reader::load_events(conn, order)?,
                indexed_seq: reader::indexed_seq(conn, order)?,
            })
        })
        .map_err(|e| store_error(order, e))
}

fn serve(reader: &ReadPool, queue: &Receiver<LoadRequest>) {
    while let Ok(request) = queue.recv() {
        if request.reply.is_closed() {
            continue; // the actor stopped waiting (killed, or the engine stopping)
        }
        // A panic while reading one order must not take a loader away from all the others: it
        // answers as a failure of that order's load (the actor is given up and recovery tries
        // the order again).
        let answer = catch_unwind(AssertUnwindSafe(|| load(reader, &request.order)))
            .unwrap_or_else(|panic| {
                let what = panic_message(panic.as_ref());
                tracing::error!(order = %request.order, panic = %what, "loading an order panicked");
                Err(StoreError::Unavailable(format!(
                    "loading the order panicked: {what}"
                )))
            });
        let _ = request.reply.send(answer);
    }
}
