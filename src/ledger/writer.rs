//! The ledger's SQLite writer: one thread that takes every write queued since its last
//! commit and applies them in one transaction (group commit), so durable billing costs one
//! commit per batch instead of one per request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use tokio::sync::oneshot;

use crate::store::{self, usage::LedgerWrite, Pool};

/// Bounds one transaction so a huge backlog still commits in steps of reasonable size.
const MAX_BATCH: usize = 1024;

pub type WriteResult = Result<(), String>;

struct Job {
    write: LedgerWrite,
    done: oneshot::Sender<WriteResult>,
}

/// Counters for `/metrics` and the benchmark.
#[derive(Default, Debug)]
pub struct WriterStats {
    pub commits: AtomicU64,
    pub writes: AtomicU64,
    pub failed_writes: AtomicU64,
    pub commit_micros_total: AtomicU64,
    pub largest_batch: AtomicU64,
    /// Micro-credits debited by committed settlements.
    pub credits_charged: AtomicU64,
}

#[derive(Clone)]
pub struct Writer {
    jobs: mpsc::Sender<Job>,
    pub stats: Arc<WriterStats>,
}

impl Writer {
    /// Starts the writer thread. It ends when every `Writer` handle has been dropped and
    /// the queue is drained, so no accepted write is abandoned.
    pub fn start(pool: Pool) -> anyhow::Result<Writer> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let stats = Arc::new(WriterStats::default());
        let thread_stats = stats.clone();
        std::thread::Builder::new()
            .name("ledger-writer".into())
            .spawn(move || run(pool, queue, &thread_stats))
            .context("start ledger writer thread")?;
        Ok(Writer { jobs, stats })
    }

    /// Queues a write; the receiver resolves once it is committed (or failed).
    pub fn submit(&self, write: LedgerWrite) -> oneshot::Receiver<WriteResult> {
        let (done, receiver) = oneshot::channel();
        if let Err(mpsc::SendError(job)) = self.jobs.send(Job { write, done }) {
            let _ = job.done.send(Err("ledger writer stopped".into()));
        }
        receiver
    }
}

fn run(pool: Pool, queue: mpsc::Receiver<Job>, stats: &WriterStats) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let started = Instant::now();
        let results = commit(&pool, &batch);
        stats.commits.fetch_add(1, Ordering::Relaxed);
        stats.writes.fetch_add(batch.len() as u64, Ordering::Relaxed);
        stats
            .commit_micros_total
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        stats.largest_batch.fetch_max(batch.len() as u64, Ordering::Relaxed);
        for (job, result) in batch.into_iter().zip(results) {
            if let (Ok(()), LedgerWrite::Settle(s)) = (&result, &job.write) {
                stats.credits_charged.fetch_add(s.micro_credits.max(0) as u64, Ordering::Relaxed);
            }
            if let Err(e) = &result {
                stats.failed_writes.fetch_add(1, Ordering::Relaxed);
                log::error!("ledger write failed: {e}");
            }
            let _ = job.done.send(result);
        }
    }
    log::debug!("ledger writer stopped");
}

/// One transaction for the batch; each write in its own savepoint so one bad write fails
/// alone instead of taking its neighbours with it.
fn commit(pool: &Pool, batch: &[Job]) -> Vec<WriteResult> {
    let attempt = || -> anyhow::Result<Vec<WriteResult>> {
        let mut conn = store::get(pool)?;
        let mut tx = conn.transaction().context("begin")?;
        let mut results = Vec::with_capacity(batch.len());
        for job in batch {
            let sp = tx.savepoint().context("savepoint")?;
            match store::usage::apply(&sp, &job.write) {
                Ok(()) => {
                    sp.commit().context("release savepoint")?;
                    results.push(Ok(()));
                }
                Err(e) => {
                    drop(sp); // rolls back this write only
                    results.push(Err(format!("{e:#}")));
                }
            }
        }
        tx.commit().context("commit")?;
        Ok(results)
    };
    match attempt() {
        Ok(results) => results,
        Err(e) => {
            let message = format!("{e:#}");
            batch.iter().map(|_| Err(message.clone())).collect()
        }
    }
}
