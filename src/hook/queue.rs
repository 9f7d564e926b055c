//! Queue owns when revocations run: a bounded queue per inventory agent,
//! each drained in order by its own task, and at most `MAX_RUNNING`
//! commands at once over all agents. Only inventory agents get a queue (the
//! map is as large as the inventory), so alerts for invented agents — which
//! are declined before they get here — cannot delay a registered one, and a
//! flood for one registered agent waits behind that agent alone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{Semaphore, mpsc};

/// Revocations one agent may have waiting; a repeat of one already queued
/// is settled before it gets here, so only distinct alerts count.
pub const PER_AGENT: usize = 16;
/// Commands run at once, over all agents.
const MAX_RUNNING: usize = 4;

/// One revocation to run: done by the closure, on a blocking thread.
pub type Job = Box<dyn FnOnce() + Send + 'static>;

pub struct Queues {
    senders: Mutex<HashMap<String, mpsc::Sender<Job>>>,
    running: Arc<Semaphore>,
}

/// Why a job was not queued.
#[derive(Debug, PartialEq, Eq)]
pub struct Full;

impl Queues {
    pub fn new() -> Queues {
        Queues {
            senders: Mutex::new(HashMap::new()),
            running: Arc::new(Semaphore::new(MAX_RUNNING)),
        }
    }

    /// A place in `agent`'s queue, held until `send` or drop; `Full` when
    /// the agent has `PER_AGENT` waiting already.
    pub fn reserve(&self, agent: &str) -> Result<mpsc::OwnedPermit<Job>, Full> {
        let sender = {
            let mut senders = self.senders.lock().map_err(|_| Full)?;
            senders
                .entry(agent.to_owned())
                .or_insert_with(|| self.start_worker())
                .clone()
        };
        sender.try_reserve_owned().map_err(|_| Full)
    }

    fn start_worker(&self) -> mpsc::Sender<Job> {
        let (tx, mut rx) = mpsc::channel::<Job>(PER_AGENT);
        let running = self.running.clone();
        tokio::spawn(async move {
            while let Some(job) = rx.recv().await {
                let Ok(_slot) = running.clone().acquire_owned().await else {
                    return;
                };
                // Detached from any request: a command that outlives the
                // connection that asked for it still runs once and records
                // its end.
                let _ = tokio::task::spawn_blocking(job).await;
            }
        });
        tx
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// A full queue for one agent refuses that agent only; another agent's
    /// revocation still runs while the first agent's queue is stuck.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_holds_back_its_own_agent_only() {
        let queues = Queues::new();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let release_rx = Arc::new(Mutex::new(release_rx));
        // The first job blocks until released (the worker has taken it off
        // the queue); the next PER_AGENT wait behind it.
        for i in 0..=PER_AGENT {
            let rx = release_rx.clone();
            let permit = queues.reserve("flooded").expect("room");
            permit.send(Box::new(move || {
                let _ = rx.lock().map(|r| r.recv_timeout(Duration::from_secs(20)));
            }));
            if i == 0 {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        assert_eq!(queues.reserve("flooded").err(), Some(Full));
        let ran = Arc::new(AtomicUsize::new(0));
        let r = ran.clone();
        queues
            .reserve("registered")
            .expect("another agent has room")
            .send(Box::new(move || {
                r.fetch_add(1, Ordering::SeqCst);
            }));
        for _ in 0..100 {
            if ran.load(Ordering::SeqCst) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(ran.load(Ordering::SeqCst), 1, "held behind another agent");
        for _ in 0..=PER_AGENT {
            let _ = release_tx.send(());
        }
    }
}
