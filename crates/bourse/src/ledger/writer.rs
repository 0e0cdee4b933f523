//! The background batch writer that keeps the database off the request path.
//!
//! The request path hands rows to a [`Writer`] (a bounded queue); one drain task takes
//! them out in batches of up to `batch` rows, waiting at most `flush_interval` after a
//! batch's first row for more, and appends each batch in one transaction, together with
//! what the batch adds to the per-minute, -hour and -day aggregates (summed in memory
//! first: one upsert per group, see [`super::aggregate`]). When the queue is full the
//! [`FullPolicy`] decides between waiting briefly and dropping; every
//! dropped row is counted ([`WriterStats::dropped`]) and logged (at most once a second).
//!
//! # What a hard kill loses
//!
//! Rows live only in process memory between `record` and the commit of their batch, so
//! SIGKILL (or OOM, or a panic with `panic = "abort"`) loses exactly the rows accepted but
//! not yet committed: those still in the queue plus the one batch the drain task holds
//! (being filled, written or retried). `record` returns only once its row is in the queue
//! or counted as dropped, and nothing else holds rows. Precisely:
//!
//! - at most `queue + batch` rows (11 024 with the defaults), reached when the store has
//!   fallen behind (or is failing) and the queue is full;
//! - while the store keeps up (the normal case) the queue is near empty, and at `r` rows/s
//!   the loss is the batch being filled — the rows that queued while the previous batch was
//!   written plus `flush_interval` of traffic, at most `batch` — plus the rows that arrive
//!   while it is written: `min(batch, r * (flush_interval + write_time)) + r * write_time`.
//!   With the defaults that is at most 200 ms of traffic (1 024 rows above 5 120 rows/s)
//!   plus two writes.
//!
//! `tests/ledger.rs` (`*::sigkill_loses_at_most_what_the_writer_holds`) SIGKILLs a child
//! recording at a fixed rate through a small writer (queue 128, batch 64) after it has sent
//! several times `queue + batch` rows, and holds the loss to that bound (measurements with
//! the defaults in docs/decisions.md). Committed batches survive SIGKILL: PostgreSQL commits are durable, and SQLite's WAL
//! with `synchronous=NORMAL` is durable across a process crash (it only risks the last
//! commits on power loss or an OS crash).
//!
//! A graceful stop ([`WriterHandle::shutdown`], on SIGTERM after the HTTP server drained)
//! loses nothing unless the store is failing.

use super::{Ledger, LedgerEntry};
use serde::Serialize;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::error::{SendTimeoutError, TrySendError};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// What [`Writer::record`] does when the queue is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FullPolicy {
    /// Wait up to `max_wait` for space (the store is usually just mid-commit), then drop.
    Block { max_wait: Duration },
    /// Drop at once.
    Drop,
}

impl Default for FullPolicy {
    fn default() -> Self {
        FullPolicy::Block { max_wait: Duration::from_millis(50) }
    }
}

/// Tuning for the batch writer. Zero `queue` or `batch` is treated as 1.
#[derive(Clone, Debug)]
pub struct WriterConfig {
    /// Rows the queue holds before [`FullPolicy`] applies.
    pub queue: usize,
    /// Most rows per transaction.
    pub batch: usize,
    /// Longest a row waits for its batch to fill before the batch is written anyway.
    pub flush_interval: Duration,
    pub on_full: FullPolicy,
    /// Retries of a failed batch before its rows are counted as dropped.
    pub retries: u32,
    /// Wait before the first retry; doubled for each further one.
    pub retry_backoff: Duration,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            queue: 10_000,
            batch: 1024,
            flush_interval: Duration::from_millis(200),
            on_full: FullPolicy::default(),
            retries: 3,
            retry_backoff: Duration::from_millis(100),
        }
    }
}

/// Counters since the writer started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct WriterStats {
    /// Rows accepted and not yet written or dropped (queued or in the current batch).
    pub queued: u64,
    /// Rows committed to the store.
    pub written: u64,
    /// Rows lost: queue full, writer shut down, or their batch failed every retry.
    pub dropped: u64,
    /// Batches given up on after every retry failed.
    pub failed_batches: u64,
}

/// The request path's side of the ledger: cheap to clone, never waits on the database.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<LedgerEntry>,
    on_full: FullPolicy,
    shared: Arc<Shared>,
}

/// A writer whose queue exists but whose drain task has not started: rows recorded now
/// wait in the queue (up to its capacity). Lets start-up hand out the [`Writer`] before
/// the store is open, and lets tests fill the queue deterministically.
pub struct PendingWriter {
    rx: mpsc::Receiver<LedgerEntry>,
    cfg: WriterConfig,
    shared: Arc<Shared>,
}

/// Owns the drain task; [`WriterHandle::shutdown`] flushes and stops it. Dropping the
/// handle leaves the task running until every [`Writer`] clone is gone (it then writes
/// what is left and ends).
pub struct WriterHandle {
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<()>,
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    queued: AtomicU64,
    written: AtomicU64,
    dropped: AtomicU64,
    failed_batches: AtomicU64,
    /// Milliseconds after `LOG_EPOCH` of the last drop log line, plus one (0 = never).
    last_drop_log: AtomicU64,
}

#[derive(Clone, Copy)]
enum DropReason {
    QueueFull,
    Closed,
    StoreFailed,
}

impl DropReason {
    fn as_str(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue full",
            DropReason::Closed => "writer shut down",
            DropReason::StoreFailed => "store failed",
        }
    }
}

impl Shared {
    fn stats(&self) -> WriterStats {
        WriterStats {
            queued: self.queued.load(Relaxed),
            written: self.written.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
            failed_batches: self.failed_batches.load(Relaxed),
        }
    }

    /// Counts lost rows and says so, at most once a second: a full queue under load would
    /// otherwise log once per request and make things worse.
    fn drop_rows(&self, n: u64, reason: DropReason) {
        let total = self.dropped.fetch_add(n, Relaxed) + n;
        let now = millis_since_epoch() + 1;
        let last = self.last_drop_log.load(Relaxed);
        if (last == 0 || now.saturating_sub(last) >= 1_000)
            && self.last_drop_log.compare_exchange(last, now, Relaxed, Relaxed).is_ok()
        {
            tracing::error!(rows = n, dropped_total = total, reason = reason.as_str(), "ledger: dropping usage rows");
        }
    }
}

/// A process-wide monotonic origin for the rate limiter.
fn millis_since_epoch() -> u64 {
    static LOG_EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let elapsed = LOG_EPOCH.get_or_init(Instant::now).elapsed();
    u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX - 1)
}

impl Writer {
    /// Creates the queue and starts the drain task on the current tokio runtime.
    pub fn start(ledger: Ledger, cfg: WriterConfig) -> (Writer, WriterHandle) {
        let (writer, pending) = Writer::queue(cfg);
        (writer, pending.start(ledger))
    }

    /// Creates the queue only; [`PendingWriter::start`] starts draining it.
    pub fn queue(cfg: WriterConfig) -> (Writer, PendingWriter) {
        let cfg = WriterConfig { queue: cfg.queue.max(1), batch: cfg.batch.max(1), ..cfg };
        let (tx, rx) = mpsc::channel(cfg.queue);
        let shared = Arc::new(Shared::default());
        (Writer { tx, on_full: cfg.on_full, shared: shared.clone() }, PendingWriter { rx, cfg, shared })
    }

    /// Queues a row, applying the [`FullPolicy`] if the queue is full.
    pub async fn record(&self, row: LedgerEntry) {
        // Counted before sending so the drain task can never subtract it first.
        self.shared.queued.fetch_add(1, Relaxed);
        let lost = match self.tx.try_send(row) {
            Ok(()) => None,
            Err(TrySendError::Closed(_)) => Some(DropReason::Closed),
            Err(TrySendError::Full(row)) => match self.on_full {
                FullPolicy::Drop => Some(DropReason::QueueFull),
                FullPolicy::Block { max_wait } => match self.tx.send_timeout(row, max_wait).await {
                    Ok(()) => None,
                    Err(SendTimeoutError::Timeout(_)) => Some(DropReason::QueueFull),
                    Err(SendTimeoutError::Closed(_)) => Some(DropReason::Closed),
                },
            },
        };
        if let Some(reason) = lost {
            self.lost(reason);
        }
    }

    /// Queues a row without waiting (for `Drop` impls and other sync code): a full queue
    /// drops it, whatever the policy.
    pub fn try_record(&self, row: LedgerEntry) {
        self.shared.queued.fetch_add(1, Relaxed);
        match self.tx.try_send(row) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.lost(DropReason::QueueFull),
            Err(TrySendError::Closed(_)) => self.lost(DropReason::Closed),
        }
    }

    /// Queues a row if there is room now; gives it back if the queue is full, so a caller
    /// in sync code can hand it to a task that applies the full-queue policy.
    // The row comes back by value to be moved straight into that task; boxing it would
    // only add an allocation to the (rare) full-queue path.
    #[allow(clippy::result_large_err)]
    pub fn offer(&self, row: LedgerEntry) -> Result<(), LedgerEntry> {
        self.shared.queued.fetch_add(1, Relaxed);
        match self.tx.try_send(row) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(row)) => {
                self.shared.queued.fetch_sub(1, Relaxed);
                Err(row)
            }
            Err(TrySendError::Closed(_)) => {
                self.lost(DropReason::Closed);
                Ok(())
            }
        }
    }

    pub fn stats(&self) -> WriterStats {
        self.shared.stats()
    }

    fn lost(&self, reason: DropReason) {
        self.shared.queued.fetch_sub(1, Relaxed);
        self.shared.drop_rows(1, reason);
    }
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").field("on_full", &self.on_full).field("stats", &self.stats()).finish_non_exhaustive()
    }
}

impl std::fmt::Debug for PendingWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingWriter").field("cfg", &self.cfg).finish_non_exhaustive()
    }
}

impl std::fmt::Debug for WriterHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriterHandle").field("stats", &self.stats()).finish_non_exhaustive()
    }
}

impl PendingWriter {
    /// Starts the drain task on the current tokio runtime.
    pub fn start(mut self, ledger: Ledger) -> WriterHandle {
        // Swap in a closed, empty receiver so our Drop (which counts abandoned rows) finds
        // nothing: the queue now belongs to the drain task.
        let rx = std::mem::replace(&mut self.rx, mpsc::channel(1).1);
        let (shutdown, signal) = oneshot::channel();
        let shared = self.shared.clone();
        let drain = Drain { rx, signal: Some(signal), ledger, cfg: self.cfg.clone(), shared: self.shared.clone() };
        WriterHandle { shutdown, task: tokio::spawn(drain.run()), shared }
    }
}

impl Drop for PendingWriter {
    /// Never started: whatever was queued will never be written, so count it.
    fn drop(&mut self) {
        self.rx.close();
        let mut n = 0;
        while self.rx.try_recv().is_ok() {
            n += 1;
        }
        if n > 0 {
            self.shared.queued.fetch_sub(n, Relaxed);
            self.shared.drop_rows(n, DropReason::Closed);
        }
    }
}

impl WriterHandle {
    /// Closes the queue at once (later `record` calls count drops), writes every row
    /// already queued, and resolves with the final counters when the task has finished.
    /// If the store is failing this takes up to the retry schedule per remaining batch;
    /// bound it with `tokio::time::timeout` if the process must exit by a deadline.
    pub fn shutdown(self) -> impl Future<Output = WriterStats> + Send {
        // Sent now, not when first polled, so the queue closes even before it is awaited.
        // An error only means the task already ended.
        let _ = self.shutdown.send(());
        let (task, shared) = (self.task, self.shared);
        async move {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "ledger: writer task failed");
            }
            shared.stats()
        }
    }

    pub fn stats(&self) -> WriterStats {
        self.shared.stats()
    }
}

/// How long the drain task naps between looks at the queue while a batch fills: short
/// enough that a full queue is noticed long before it overflows, long enough that a busy
/// gateway wakes the writer ~100 times a second instead of once per request.
const LINGER_STEP: Duration = Duration::from_millis(10);

struct Drain {
    rx: mpsc::Receiver<LedgerEntry>,
    /// The shutdown signal, until it fires or the handle is dropped.
    signal: Option<oneshot::Receiver<()>>,
    ledger: Ledger,
    cfg: WriterConfig,
    shared: Arc<Shared>,
}

impl Drain {
    async fn run(mut self) {
        let mut batch = Vec::with_capacity(self.cfg.batch);
        // After a batch failed every retry, later batches get one attempt each until a
        // write succeeds, so a dead store costs shutdown one attempt per batch, not four.
        let mut degraded = false;
        loop {
            if self.recv(&mut batch, self.cfg.batch).await == 0 {
                break; // closed and empty
            }
            let deadline = tokio::time::Instant::now() + self.cfg.flush_interval;
            let mut open = true;
            // Fill the batch by napping and draining what arrived, rather than awaiting each
            // row: a receiver parked on `recv` is woken by every send, which under load is a
            // cross-thread wake-up per request (measured: the largest ledger cost).
            while batch.len() < self.cfg.batch {
                let now = tokio::time::Instant::now();
                if now >= deadline {
                    break;
                }
                self.nap((deadline - now).min(LINGER_STEP)).await;
                if !self.drain_ready(&mut batch) {
                    open = false;
                    break;
                }
            }
            let written;
            (batch, written) = self.write(std::mem::take(&mut batch), degraded).await;
            degraded = !written;
            if !open {
                break;
            }
        }
    }

    /// Sleeps up to `d`, waking early if shutdown is signalled (which closes the queue).
    async fn nap(&mut self, d: Duration) {
        let Some(signal) = self.signal.as_mut() else {
            tokio::time::sleep(d).await;
            return;
        };
        tokio::select! {
            () = tokio::time::sleep(d) => {}
            fired = signal => {
                self.signal = None;
                if fired.is_ok() {
                    self.rx.close();
                }
            }
        }
    }

    /// Moves rows that are already queued into `batch` without waiting, up to the batch
    /// size. False when the queue is closed and empty.
    fn drain_ready(&mut self, batch: &mut Vec<LedgerEntry>) -> bool {
        while batch.len() < self.cfg.batch {
            match self.rx.try_recv() {
                Ok(row) => batch.push(row),
                Err(mpsc::error::TryRecvError::Empty) => return true,
                Err(mpsc::error::TryRecvError::Disconnected) => return false,
            }
        }
        true
    }

    /// Receives up to `limit` rows into `batch`; 0 means the queue is closed and empty.
    /// Watches for the shutdown signal meanwhile: it closes the queue, after which the
    /// rows still buffered keep coming and then 0. Cancel-safe (used under a timeout).
    async fn recv(&mut self, batch: &mut Vec<LedgerEntry>, limit: usize) -> usize {
        loop {
            let Some(signal) = self.signal.as_mut() else {
                return self.rx.recv_many(batch, limit).await;
            };
            tokio::select! {
                n = self.rx.recv_many(batch, limit) => return n,
                fired = signal => {
                    self.signal = None;
                    // Err: the handle was dropped without shutting down; keep running
                    // until every Writer is gone.
                    if fired.is_ok() {
                        self.rx.close();
                    }
                }
            }
        }
    }

    /// Writes one batch with retries; false if it was given up on. Hands back the batch's
    /// allocation, emptied, for the next one (a fresh 1 024-row buffer per batch costs ~300
    /// instructions per row under `bench/icount.sh`).
    async fn write(&self, mut batch: Vec<LedgerEntry>, degraded: bool) -> (Vec<LedgerEntry>, bool) {
        let n = batch.len() as u64;
        let retries = if degraded { 0 } else { self.cfg.retries };
        let mut backoff = self.cfg.retry_backoff;
        let mut attempt = 0;
        let ok = loop {
            let result;
            (batch, result) = self.ledger.write(batch).await;
            match result {
                Ok(()) => {
                    self.shared.written.fetch_add(n, Relaxed);
                    break true;
                }
                // The rows did not come back only if the blocking task died: nothing to retry.
                Err(e) if attempt < retries && batch.len() as u64 == n => {
                    attempt += 1;
                    tracing::warn!(error = %e, rows = n, attempt, "ledger: batch write failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = backoff.saturating_mul(2);
                }
                Err(e) => {
                    self.shared.failed_batches.fetch_add(1, Relaxed);
                    tracing::error!(error = %e, rows = n, "ledger: batch write failed; giving up on it");
                    self.shared.drop_rows(n, DropReason::StoreFailed);
                    break false;
                }
            }
        };
        self.shared.queued.fetch_sub(n, Relaxed);
        batch.clear();
        if batch.capacity() < self.cfg.batch {
            batch.reserve_exact(self.cfg.batch);
        }
        (batch, ok)
    }
}
