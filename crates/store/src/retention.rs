//! Retention purge and erasure, shared by the server's schedule, its API and `catsdogs db`:
//! database rows, inference-log lines and consented image files go together.
use std::path::Path;

use crate::{Outbox, PurgeCutoffs, RemovedRows, Store, StoreError};
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::images::{ImageStore, SWEEP_GRACE};
use crate::inference_log::LogFiles;

/// Retention periods, in days (the seed's GDPR policy by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Predictions (database rows and inference-log lines).
    pub predictions_days: u32,
    pub feedback_days: u32,
    pub audit_days: u32,
}

impl Default for Retention {
    fn default() -> Self {
        Self { predictions_days: 180, feedback_days: 365, audit_days: 365 }
    }
}

impl Retention {
    /// The cut-off instants for a purge run at `now`.
    pub fn cutoffs(&self, now: DateTime<Utc>) -> PurgeCutoffs {
        let before = |days: u32| {
            now.checked_sub_signed(chrono::Duration::days(i64::from(days))).unwrap_or(DateTime::<Utc>::MIN_UTC)
        };
        PurgeCutoffs {
            predictions: before(self.predictions_days),
            feedback: before(self.feedback_days),
            audit: before(self.audit_days),
        }
    }
}

/// Everything that holds personal data, for one purge or erasure.
#[derive(Clone, Copy)]
pub struct Holdings<'a> {
    pub store: &'a Store,
    pub log: Option<&'a LogFiles>,
    pub images: &'a ImageStore,
    pub queued: Queued<'a>,
}

/// Prediction rows that have not reached the database yet.
#[derive(Clone, Copy)]
pub enum Queued<'a> {
    /// A running server's queue (and the spill file it was restored from).
    Outbox(&'a Outbox),
    /// The spill file of a stopped server ([`crate::outbox::SPILL_FILE`] in its data folder).
    SpillFile(&'a Path),
}

impl Queued<'_> {
    /// Removes the queued rows for which `erased` holds; returns them.
    fn remove_where(
        self,
        erased: &dyn Fn(&crate::PredictionRecord) -> bool,
    ) -> std::io::Result<Vec<crate::PredictionRecord>> {
        match self {
            Self::Outbox(o) => o.remove_where(erased),
            Self::SpillFile(path) => crate::outbox::remove_spilled_where(path, erased),
        }
    }
}

/// Rows to delete per statement.
pub const PURGE_BATCH: u32 = 1000;

/// What a purge or an erasure removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Removed {
    #[serde(flatten)]
    pub rows: RemovedRows,
    pub inference_log_lines: u64,
    pub images: u64,
}

/// Errors of a purge or an erasure.
#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("inference log or image files: {0}")]
    Log(#[from] std::io::Error),
    /// The store was opened without the key erasure tombstones are made with.
    #[error("erasure needs the pseudonymisation key (the server's secrets folder)")]
    NoErasureKey,
}

/// Deletes the image files of `refs` that no prediction references any more.
async fn remove_unreferenced(store: &Store, images: &ImageStore, refs: Vec<String>) -> Result<u64, RetentionError> {
    let mut removed = 0;
    for r in refs {
        if !store.image_in_use(&r).await? && images.remove(&r)? {
            removed += 1;
        }
    }
    Ok(removed)
}

/// Deletes what is older than the retention periods (database, inference log, images no
/// row references any more) and records the run in the audit log under `actor`. One
/// replica at a time (the purge lock).
pub async fn purge(
    h: Holdings<'_>,
    retention: Retention,
    now: DateTime<Utc>,
    actor: &str,
) -> Result<Removed, RetentionError> {
    let Some(lock) = h.store.try_purge_lock().await? else {
        tracing::info!("another replica is running the retention purge; this run is skipped");
        return Ok(Removed::default());
    };
    let result = purge_locked(h, retention, now, actor).await;
    lock.release().await;
    result
}

async fn purge_locked(
    h: Holdings<'_>,
    retention: Retention,
    now: DateTime<Utc>,
    actor: &str,
) -> Result<Removed, RetentionError> {
    let Holdings { store, log, images, .. } = h;
    let cutoffs = retention.cutoffs(now);
    let rows = store.purge(&cutoffs, PURGE_BATCH).await?;
    store.purge_tombstones(cutoffs.predictions).await?;
    let lines = match log {
        Some(l) => {
            let cutoff = cutoffs.predictions;
            l.off_thread(move |l| l.remove_before(cutoff)).await?
        }
        None => 0,
    };
    let referenced = store.referenced_images().await?;
    let images = images.clone();
    let swept = tokio::task::spawn_blocking(move || images.sweep(&referenced, SWEEP_GRACE))
        .await
        .map_err(std::io::Error::other)??;
    let detail = format!(
        "retention {}/{}/{} days: {} predictions, {} feedback, {} audit rows, {} log lines, {} images",
        retention.predictions_days,
        retention.feedback_days,
        retention.audit_days,
        rows.predictions,
        rows.feedback,
        rows.audit,
        lines,
        swept
    );
    store.audit(now, actor, "purge", &detail).await?;
    tracing::info!(actor, %detail, "retention purge");
    Ok(Removed { rows, inference_log_lines: lines, images: swept })
}

/// Erases one prediction everywhere it is held: queued rows (memory or spill file), the
/// row and its feedback, its inference-log lines in every replica's files, its consented
/// image. The tombstone and the audit row come first: when they cannot be written
/// (database down) nothing is removed. Files that cannot be removed now stay pending on
/// the tombstone and [`retry_pending_erasures`] finishes them. The command line and the
/// API both erase through here.
pub async fn erase_id(h: Holdings<'_>, id: &str, now: DateTime<Utc>, actor: &str) -> Result<Removed, RetentionError> {
    let store = h.store;
    let key = store.erasure_key().ok_or(RetentionError::NoErasureKey)?;
    let tombstone = key.tombstone(id);
    store.record_erasure(&tombstone, now, actor, &format!("prediction {id}")).await?;
    let queued = h.queued.remove_where(&|r| r.id == id)?;
    let stored_image = store.get_prediction(id).await?.and_then(|p| p.image_ref);
    let mut rows = store.erase_prediction(id).await?;
    rows.predictions += queued.len() as u64;
    let mut refs: Vec<String> =
        stored_image.into_iter().chain(queued.into_iter().filter_map(|r| r.image_ref)).collect();
    refs.dedup();
    let wanted = id.to_string();
    match remove_files(h, move |line_id| line_id == wanted, refs.clone()).await {
        Ok((lines, images)) => {
            store.erasure_files_done(&tombstone).await?;
            Ok(Removed { rows, inference_log_lines: lines, images })
        }
        Err(e) => {
            // Kept for the retry (the image reference is a content hash, not the id).
            if let Err(pending) = store.erasure_files_pending(&tombstone, refs.first().map(String::as_str)).await {
                tracing::error!(error = %pending, "an unfinished erasure could not be recorded for a retry");
            }
            Err(e)
        }
    }
}

/// Removes the inference-log lines whose prediction id `matches` and the images of `refs`
/// that no prediction references any more.
async fn remove_files(
    h: Holdings<'_>,
    matches: impl Fn(&str) -> bool + Send + 'static,
    refs: Vec<String>,
) -> Result<(u64, u64), RetentionError> {
    let lines = match h.log {
        Some(l) => l.off_thread(move |l| l.erase_where(&matches)).await?,
        None => 0,
    };
    let images = remove_unreferenced(h.store, h.images, refs).await?;
    Ok((lines, images))
}

/// Finishes erasures whose files could not all be removed at the time (a disk error, a
/// replica's file locked): their log lines are found by tombstone, their image by the
/// reference kept with it. Returns how many erasures were completed.
pub async fn retry_pending_erasures(h: Holdings<'_>) -> Result<usize, RetentionError> {
    let Some(key) = h.store.erasure_key() else { return Ok(0) };
    let mut done = 0;
    for pending in h.store.pending_erasures(100).await? {
        let (key, tombstone) = (key.clone(), pending.tombstone.clone());
        remove_files(h, move |line_id| key.tombstone(line_id) == tombstone, pending.image_ref.into_iter().collect())
            .await?;
        h.store.erasure_files_done(&pending.tombstone).await?;
        done += 1;
    }
    Ok(done)
}

/// Erases everything created before `before` (rows, feedback, log lines, images), audited.
pub async fn erase_before(
    h: Holdings<'_>,
    before: DateTime<Utc>,
    now: DateTime<Utc>,
    actor: &str,
) -> Result<Removed, RetentionError> {
    let Holdings { store, log, images, queued } = h;
    store.audit(now, actor, "erase", &format!("everything before {}", before.to_rfc3339())).await?;
    // Rows still waiting for the database (queued, or spilled by a stopped server) too.
    let waiting = queued.remove_where(&|r| r.created_at < before)?;
    let mut refs = store.image_refs_before(before).await?;
    refs.extend(waiting.iter().filter_map(|r| r.image_ref.clone()));
    let mut rows = store.erase_before(before).await?;
    rows.predictions += waiting.len() as u64;
    let lines = match log {
        Some(l) => l.off_thread(move |l| l.remove_before(before)).await?,
        None => 0,
    };
    let images = remove_unreferenced(store, images, refs).await?;
    Ok(Removed { rows, inference_log_lines: lines, images })
}
