//! One SLA timer structure per shard: a task that owns a `DelayQueue` of every armed deadline of
//! the shard's orders (active or passivated) and tells the shard supervisor when one is due.

use super::ShardClock;
use super::supervisor::ShardMsg;
use crate::order::Millis;
use ractor::ActorRef;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::time::{DelayQueue, delay_queue};

/// A change to the shard's armed deadlines.
#[derive(Debug)]
pub(crate) enum TimerCmd {
    /// Arm (or re-arm with a new deadline) the timer of `rule` for `order`.
    Arm {
        order: Arc<str>,
        rule: Arc<str>,
        deadline: Millis,
    },
    /// Disarm the timer of `rule` for `order`, if armed.
    Disarm { order: Arc<str>, rule: Arc<str> },
}

/// Sender side of a shard's timer structure.
#[derive(Clone, Debug)]
pub(crate) struct TimerHandle(mpsc::UnboundedSender<TimerCmd>);

impl TimerHandle {
    pub(crate) fn arm(&self, order: &Arc<str>, rule: &str, deadline: Millis) {
        // The receiver lives as long as the shard; after shutdown there is nothing to arm.
        let _ = self.0.send(TimerCmd::Arm {
            order: order.clone(),
            rule: rule.into(),
            deadline,
        });
    }

    pub(crate) fn disarm(&self, order: &Arc<str>, rule: &str) {
        let _ = self.0.send(TimerCmd::Disarm {
            order: order.clone(),
            rule: rule.into(),
        });
    }
}

pub(crate) fn channel() -> (TimerHandle, mpsc::UnboundedReceiver<TimerCmd>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (TimerHandle(tx), rx)
}

type TimerKey = (Arc<str>, Arc<str>);

/// Runs the shard's timer structure until every sender is gone or the supervisor stops.
pub(crate) async fn run(
    mut commands: mpsc::UnboundedReceiver<TimerCmd>,
    supervisor: ActorRef<ShardMsg>,
    clock: ShardClock,
    armed_gauge: Arc<AtomicI64>,
) {
    let mut queue: DelayQueue<TimerKey> = DelayQueue::new();
    let mut armed: HashMap<TimerKey, (delay_queue::Key, Millis)> = HashMap::new();
    loop {
        tokio::select! {
            command = commands.recv() => {
                let Some(command) = command else { break };
                let before = armed.len() as i64;
                match command {
                    TimerCmd::Arm { order, rule, deadline } => {
                        let delay = Duration::from_millis(deadline.saturating_sub(clock.now_ms()).max(0) as u64);
                        let key = (order, rule);
                        match armed.get_mut(&key) {
                            Some((_, at)) if *at == deadline => {}
                            Some((slot, at)) => {
                                queue.reset(slot, delay);
                                *at = deadline;
                            }
                            None => {
                                let slot = queue.insert(key.clone(), delay);
                                armed.insert(key, (slot, deadline));
                            }
                        }
                    }
                    TimerCmd::Disarm { order, rule } => {
                        if let Some((slot, _)) = armed.remove(&(order, rule)) {
                            queue.remove(&slot);
                        }
                    }
                }
                armed_gauge.fetch_add(armed.len() as i64 - before, Ordering::Relaxed);
            }
            expired = std::future::poll_fn(|cx| queue.poll_expired(cx)), if !queue.is_empty() => {
                let Some(expired) = expired else { continue };
                let (order, rule) = expired.into_inner();
                if let Some((_, deadline)) = armed.remove(&(order.clone(), rule.clone())) {
                    armed_gauge.fetch_sub(1, Ordering::Relaxed);
                    if supervisor.cast(ShardMsg::SlaDue { order, rule, deadline }).is_err() {
                        break;
                    }
                }
            }
        }
    }
    armed_gauge.fetch_sub(armed.len() as i64, Ordering::Relaxed);
}
