//! Retention purge and erasure, shared by the server's schedule, its API and `catsdogs db`:
//! database rows, inference-log lines and consented image files go together.
use std::collections::HashSet;

use crate::{PurgeCutoffs, RemovedRows, Store, StoreError};
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
    #[error("inference log: {0}")]
    Log(#[from] std::io::Error),
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
    let Holdings { store, log, images } = h;
    let cutoffs = retention.cutoffs(now);
    let rows = store.purge(&cutoffs, PURGE_BATCH).await?;
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

/// Erases one prediction (row, feedback, log lines, image), audited under `actor`.
/// `queued_image` is the image of a row still waiting in the outbox, if any.
pub async fn erase_id(
    h: Holdings<'_>,
    id: &str,
    queued_image: Option<String>,
    now: DateTime<Utc>,
    actor: &str,
) -> Result<Removed, RetentionError> {
    let Holdings { store, log, images } = h;
    store.audit(now, actor, "erase", &format!("prediction {id}")).await?;
    let stored_image = store.get_prediction(id).await?.and_then(|p| p.image_ref);
    let rows = store.erase_prediction(id).await?;
    let lines = match log {
        Some(l) => {
            let ids = HashSet::from([id.to_string()]);
            l.off_thread(move |l| l.erase_ids(&ids)).await?
        }
        None => 0,
    };
    let refs = stored_image.into_iter().chain(queued_image).collect();
    let images = remove_unreferenced(store, images, refs).await?;
    Ok(Removed { rows, inference_log_lines: lines, images })
}

/// Erases everything created before `before` (rows, feedback, log lines, images), audited.
pub async fn erase_before(
    h: Holdings<'_>,
    before: DateTime<Utc>,
    now: DateTime<Utc>,
    actor: &str,
) -> Result<Removed, RetentionError> {
    let Holdings { store, log, images } = h;
    store.audit(now, actor, "erase", &format!("everything before {}", before.to_rfc3339())).await?;
    let refs = store.image_refs_before(before).await?;
    let rows = store.erase_before(before).await?;
    let lines = match log {
        Some(l) => l.off_thread(move |l| l.remove_before(before)).await?,
        None => 0,
    };
    let images = remove_unreferenced(store, images, refs).await?;
    Ok(Removed { rows, inference_log_lines: lines, images })
}
