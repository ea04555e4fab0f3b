//! The shared context of one run (`Ctx`): configuration, clients, controls, the durable state behind
//! a lock never held across `.await`, live counters, the recheck queue; and what turns them into
//! events: progress snapshots (rate, ETA), checkpoints, confirmed mismatches.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use mongodb::Client;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::queue::RecheckQueue;
use crate::state::VerifyState;
use crate::throttle::Throttle;
use crate::types::{
    CollectionSummary, Mismatch, MismatchCounts, MismatchKind, OpTime, VerifyCheckpoint,
    VerifyConfig, VerifyControl, VerifyEvent, VerifyPhase, VerifyProgress, VerifyStatus,
};
use crate::VerifyError;

/// Documents counted by ranges in progress (moved into the state when a range finishes).
#[derive(Default)]
pub(crate) struct LiveCounts {
    pub src: AtomicU64,
    pub dst: AtomicU64,
}

pub(crate) struct Ctx {
    pub cfg: VerifyConfig,
    pub src: Client,
    pub dst: Client,
    pub control: VerifyControl,
    /// Fires on `control.cancel()` or a fatal error.
    pub cancel: CancellationToken,
    pub applied: watch::Receiver<Option<OpTime>>,
    pub events: mpsc::Sender<VerifyEvent>,
    pub src_throttle: Throttle,
    pub dst_throttle: Throttle,
    pub state: Mutex<VerifyState>,
    pub queue: RecheckQueue,
    /// Per collection of the plan (same index as `state.collections`).
    pub live: Vec<LiveCounts>,
    /// Documents left pending after `max_recheck_attempts` (keys as in `state.confirmed`).
    pub left_pending: Mutex<HashSet<String>>,
    pub failure: Mutex<Option<VerifyError>>,
    pub phase: Mutex<VerifyPhase>,
    /// Last oplog entry the watcher queued (saved in checkpoints).
    pub watcher_pos: Mutex<Option<OpTime>>,
    /// Documents rechecked by this run.
    pub rechecked: AtomicU64,
    pub started_at: SystemTime,
    rate: Mutex<VecDeque<(Instant, u64)>>,
}

const RATE_WINDOW_SECS: f64 = 10.0;

impl Ctx {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        cfg: VerifyConfig,
        (src, dst): (Client, Client),
        control: VerifyControl,
        applied: watch::Receiver<Option<OpTime>>,
        events: mpsc::Sender<VerifyEvent>,
        state: VerifyState,
        queue: RecheckQueue,
    ) -> Self {
        let rate = cfg.max_docs_per_second;
        let n = state.collections.len();
        Self {
            cancel: control.cancel_token().child_token(),
            cfg,
            src,
            dst,
            control,
            applied,
            events,
            src_throttle: Throttle::new(rate),
            dst_throttle: Throttle::new(rate),
            state: Mutex::new(state),
            queue,
            live: (0..n).map(|_| LiveCounts::default()).collect(),
            left_pending: Mutex::new(HashSet::new()),
            failure: Mutex::new(None),
            phase: Mutex::new(VerifyPhase::Metadata),
            watcher_pos: Mutex::new(None),
            rechecked: AtomicU64::new(0),
            started_at: SystemTime::now(),
            rate: Mutex::new(VecDeque::new()),
        }
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, VerifyState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn set_phase(&self, p: VerifyPhase) {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner()) = p;
    }

    /// Records the first fatal error and stops the run.
    pub(crate) fn fail(&self, e: VerifyError) {
        let mut f = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        if f.is_none() {
            *f = Some(e);
        }
        self.cancel.cancel();
    }

    pub(crate) fn take_failure(&self) -> Option<VerifyError> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    pub(crate) fn applied_now(&self) -> Option<OpTime> {
        *self.applied.borrow()
    }

    pub(crate) async fn emit(&self, ev: VerifyEvent) {
        // A closed channel means the caller is gone; the run still finishes and returns its report.
        let _ = self.events.send(ev).await;
    }

    /// Records a confirmed mismatch (emitting it when new).
    pub(crate) async fn confirm(&self, key: String, m: Mismatch) {
        self.left_pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
        let cap = self.cfg.tuning.max_reported_mismatches;
        let new = self.state().confirm(key, m.clone(), cap);
        if new {
            tracing::info!(task_id = %self.cfg.task_id, ns = %m.namespace, kind = ?m.kind, id = ?m.id, path = ?m.field_path, "mismatch confirmed");
            self.emit(VerifyEvent::Mismatch(m)).await;
        }
    }

    /// A document compared equal again: it is no longer a mismatch nor pending.
    pub(crate) fn resolve(&self, key: &str) {
        self.left_pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
        if self.state().confirmed.remove(key).is_some() {
            tracing::info!(task_id = %self.cfg.task_id, key, "mismatch resolved by a recheck");
        }
    }

    pub(crate) fn checkpoint(&self) -> VerifyCheckpoint {
        let (gen, head) = self.queue.position();
        let watcher = *self.watcher_pos.lock().unwrap_or_else(|p| p.into_inner());
        let mut st = self.state();
        if let Some(w) = watcher {
            st.watcher_ts = Some(w.pack());
        }
        st.queue_gen = gen;
        st.queue_head = head;
        let (ranges_done, ranges_total) = st.ranges();
        let documents_compared = st
            .collections
            .iter()
            .flat_map(|c| &c.ranges)
            .map(|r| r.src_docs)
            .sum();
        VerifyCheckpoint {
            phase: *self.phase.lock().unwrap_or_else(|p| p.into_inner()),
            ranges_done,
            ranges_total,
            documents_compared,
            verify_state: st.encode(),
        }
    }

    pub(crate) async fn emit_checkpoint(&self) {
        let cp = self.checkpoint();
        self.emit(VerifyEvent::Checkpoint(cp)).await;
    }

    pub(crate) fn counts(&self) -> MismatchCounts {
        let st = self.state();
        let mut c = MismatchCounts {
            missing_on_destination: st.overflow.missing,
            extra_on_destination: st.overflow.extra,
            different: st.overflow.different,
            metadata: st.overflow.metadata,
        };
        for m in st.confirmed.values() {
            match m.kind {
                MismatchKind::MissingOnDestination => c.missing_on_destination += 1,
                MismatchKind::ExtraOnDestination => c.extra_on_destination += 1,
                MismatchKind::Different => c.different += 1,
                MismatchKind::Metadata => c.metadata += 1,
            }
        }
        c
    }

    fn collections(&self) -> (Vec<CollectionSummary>, u64, u64) {
        let st = self.state();
        let mut out = Vec::with_capacity(st.collections.len());
        let (mut compared, mut estimated) = (0, 0);
        for (i, c) in st.collections.iter().enumerate() {
            let live = self.live.get(i);
            let load = |a: Option<&AtomicU64>| a.map_or(0, |v| v.load(Ordering::Relaxed));
            let src: u64 =
                c.ranges.iter().map(|r| r.src_docs).sum::<u64>() + load(live.map(|l| &l.src));
            let dst: u64 =
                c.ranges.iter().map(|r| r.dst_docs).sum::<u64>() + load(live.map(|l| &l.dst));
            let prefix = format!("d:{}\0", c.ns);
            let mismatches = st
                .confirmed
                .keys()
                .filter(|k| k.starts_with(&prefix))
                .count() as u64;
            let done = c.ranges.iter().filter(|r| r.done).count() as u32;
            compared += src;
            estimated += c.docs_estimated.max(src);
            out.push(CollectionSummary {
                namespace: c.ns.clone(),
                source_documents: src,
                destination_documents: dst,
                mismatches,
                ranges_done: done,
                ranges_total: c.ranges.len() as u32,
                done: done as usize == c.ranges.len(),
            });
        }
        (out, compared, estimated)
    }

    /// A progress snapshot; `finished` sets the final status.
    pub(crate) fn snapshot(&self, finished: bool) -> VerifyProgress {
        let (collections, compared, estimated) = self.collections();
        let confirmed = self.counts();
        let (queued, diffs) = self.queue.sizes();
        let left = self
            .left_pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len() as u64;
        let pending = diffs + left;
        let rate = self.rate(compared);
        let remaining = estimated.saturating_sub(compared);
        let eta_seconds = match (remaining, rate) {
            (0, _) => Some(0),
            (r, x) if x > 0.0 => Some((r as f64 / x).ceil() as u64),
            _ => None,
        };
        let status = match (finished, confirmed.total() + pending) {
            (false, _) => VerifyStatus::Running,
            (true, 0) => VerifyStatus::Passed,
            (true, _) => VerifyStatus::Failed,
        };
        VerifyProgress {
            status,
            phase: *self.phase.lock().unwrap_or_else(|p| p.into_inner()),
            documents_compared: compared,
            documents_estimated: estimated,
            confirmed,
            pending,
            recheck_queue_len: queued,
            documents_rechecked: self.rechecked.load(Ordering::Relaxed),
            collections,
            started_at: self.started_at,
            finished_at: finished.then(SystemTime::now),
            documents_per_second: rate,
            eta_seconds,
        }
    }

    /// Documents per second over the last seconds.
    fn rate(&self, compared: u64) -> f64 {
        let now = Instant::now();
        let mut w = self.rate.lock().unwrap_or_else(|p| p.into_inner());
        w.push_back((now, compared));
        while w.len() > 2
            && w.front()
                .is_some_and(|(t, _)| now.duration_since(*t).as_secs_f64() > RATE_WINDOW_SECS)
        {
            w.pop_front();
        }
        match (w.front(), w.back()) {
            (Some((t0, c0)), Some((t1, c1))) if t1 > t0 => {
                c1.saturating_sub(*c0) as f64 / t1.duration_since(*t0).as_secs_f64()
            }
            _ => 0.0,
        }
    }
}

/// Emits a progress snapshot every `progress_interval` until `done`.
pub(crate) async fn progress_loop(ctx: Arc<Ctx>, done: CancellationToken) {
    let every = ctx
        .cfg
        .tuning
        .progress_interval
        .max(std::time::Duration::from_millis(50));
    loop {
        tokio::select! {
            _ = done.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let p = ctx.snapshot(false);
        ctx.emit(VerifyEvent::Progress(p)).await;
    }
}
