//! The ledger's SQLite writer: one thread that takes every write queued since its last
//! commit and applies them in one transaction (group commit), so durable billing costs one
//! commit per batch instead of one per request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::oneshot;

use rusqlite::Connection;

use crate::store::usage::{LedgerWrite, Settlement};
use crate::store::{self, Pool};

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
    /// Dropped with the last `Writer`, which stops the checkpointer.
    _checkpointer: Arc<mpsc::Sender<()>>,
}

/// How often the WAL is checkpointed.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

impl Writer {
    /// Starts the writer thread. It ends when every `Writer` handle has been dropped and
    /// the queue is drained, so no accepted write is abandoned.
    pub fn start(pool: Pool) -> anyhow::Result<Writer> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let stats = Arc::new(WriterStats::default());
        let thread_stats = stats.clone();
        let checkpoint_pool = pool.clone();
        std::thread::Builder::new()
            .name("ledger-writer".into())
            .spawn(move || run(pool, queue, &thread_stats))
            .context("start ledger writer thread")?;
        let (stop, stopped) = mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("wal-checkpoint".into())
            .spawn(move || checkpoint_until_stopped(checkpoint_pool, stopped))
            .context("start checkpoint thread")?;
        Ok(Writer { jobs, stats, _checkpointer: Arc::new(stop) })
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

/// SQLite checkpoints the WAL in whichever connection's commit crosses 1,000 pages; on the
/// ledger writer that stalls every request waiting for its commit (tens of ms at p99). So the
/// writer's connection does not checkpoint, and this thread does, PASSIVE (it never blocks a
/// writer), once a second.
fn checkpoint_until_stopped(pool: Pool, stopped: mpsc::Receiver<()>) {
    loop {
        let stop =
            !matches!(stopped.recv_timeout(CHECKPOINT_EVERY), Err(mpsc::RecvTimeoutError::Timeout));
        let result = store::get(&pool).and_then(|conn| {
            conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())).context("checkpoint")
        });
        if let Err(e) = result {
            log::warn!("WAL checkpoint failed: {e:#}");
        }
        if stop {
            return;
        }
    }
}

/// How often a key's `last_used_at` is written at most.
const TOUCH_EVERY: Duration = Duration::from_secs(60);

fn run(pool: Pool, queue: mpsc::Receiver<Job>, stats: &WriterStats) {
    let mut touched: HashMap<String, Instant> = HashMap::new();
    // One connection for the writer's whole life: no pool round trip per batch.
    let mut conn: Option<store::Conn> = None;
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let started = Instant::now();
        let touch: Vec<bool> =
            batch.iter().map(|job| due_for_touch(&mut touched, &job.write, started)).collect();
        let results = match conn.as_mut() {
            Some(conn) => commit(conn, &batch, &touch),
            None => match store::get(&pool).and_then(without_autocheckpoint) {
                Ok(fresh) => commit(conn.insert(fresh), &batch, &touch),
                Err(e) => batch.iter().map(|_| Err(format!("{e:#}"))).collect(),
            },
        };
        if results.iter().all(Result::is_err) {
            conn = None; // a broken connection is replaced on the next batch
        }
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
        if touched.len() > 100_000 {
            touched.clear();
        }
    }
    log::debug!("ledger writer stopped");
}

/// The writer leaves checkpoints to `checkpoint_until_stopped`.
fn without_autocheckpoint(conn: store::Conn) -> anyhow::Result<store::Conn> {
    conn.pragma_update(None, "wal_autocheckpoint", 0).context("disable autocheckpoint")?;
    Ok(conn)
}

fn due_for_touch(
    touched: &mut HashMap<String, Instant>,
    write: &LedgerWrite,
    now: Instant,
) -> bool {
    let LedgerWrite::Settle(Settlement { api_key_id: Some(key), .. }) = write else { return false };
    match touched.get(key) {
        Some(at) if now.duration_since(*at) < TOUCH_EVERY => false,
        _ => {
            touched.insert(key.clone(), now);
            true
        }
    }
}

/// One transaction for the batch. Writes almost never fail, so the batch is first tried
/// whole; if any write fails, it is redone with a savepoint per write, so the bad one fails
/// alone instead of taking its neighbours with it.
fn commit(conn: &mut Connection, batch: &[Job], touch: &[bool]) -> Vec<WriteResult> {
    let mut whole = || -> anyhow::Result<()> {
        let tx = conn.transaction().context("begin")?;
        for (job, &touch_key) in batch.iter().zip(touch) {
            store::usage::apply(&tx, &job.write, touch_key)?;
        }
        tx.commit().context("commit")
    };
    if whole().is_ok() {
        return batch.iter().map(|_| Ok(())).collect();
    }
    let mut one_by_one = || -> anyhow::Result<Vec<WriteResult>> {
        let mut tx = conn.transaction().context("begin")?;
        let mut results = Vec::with_capacity(batch.len());
        for (job, &touch_key) in batch.iter().zip(touch) {
            let sp = tx.savepoint().context("savepoint")?;
            match store::usage::apply(&sp, &job.write, touch_key) {
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
    match one_by_one() {
        Ok(results) => results,
        Err(e) => {
            let message = format!("{e:#}");
            batch.iter().map(|_| Err(message.clone())).collect()
        }
    }
}
