//! Retention purge and bulk erasure, shared by the server's schedule and `catsdogs db`.
use std::collections::HashSet;

use catsdogs_store::{RemovedRows, Store, StoreError};
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::Retention;
use crate::inference_log::LogFiles;

/// Rows to delete per statement.
pub const PURGE_BATCH: u32 = 1000;

/// What a purge or an erasure removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Removed {
    #[serde(flatten)]
    pub rows: RemovedRows,
    pub inference_log_lines: u64,
}

/// Errors of a purge or an erasure.
#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("inference log: {0}")]
    Log(#[from] std::io::Error),
}

/// Deletes what is older than the retention periods (database and inference log) and
/// records the run in the audit log under `actor`.
pub async fn purge(
    store: &Store,
    log: Option<&LogFiles>,
    retention: Retention,
    now: DateTime<Utc>,
    actor: &str,
) -> Result<Removed, RetentionError> {
    let Some(lock) = store.try_purge_lock().await? else {
        tracing::info!("another replica is running the retention purge; this run is skipped");
        return Ok(Removed::default());
    };
    let cutoffs = retention.cutoffs(now);
    let rows = store.purge(&cutoffs, PURGE_BATCH).await;
    let rows = match rows {
        Ok(r) => r,
        Err(e) => {
            lock.release().await;
            return Err(e.into());
        }
    };
    let lines = match log {
        Some(l) => {
            let cutoff = cutoffs.predictions;
            l.off_thread(move |l| l.remove_before(cutoff)).await?
        }
        None => 0,
    };
    let removed = Removed { rows, inference_log_lines: lines };
    let detail = format!(
        "retention {}/{}/{} days: {} predictions, {} feedback, {} audit rows, {} log lines",
        retention.predictions_days,
        retention.feedback_days,
        retention.audit_days,
        rows.predictions,
        rows.feedback,
        rows.audit,
        lines
    );
    let audited = store.audit(now, actor, "purge", &detail).await;
    lock.release().await;
    audited?;
    tracing::info!(actor, %detail, "retention purge");
    Ok(removed)
}

/// Erases one prediction (row, feedback, log lines), audited under `actor`.
pub async fn erase_id(
    store: &Store,
    log: Option<&LogFiles>,
    id: &str,
    now: DateTime<Utc>,
    actor: &str,
) -> Result<Removed, RetentionError> {
    store.audit(now, actor, "erase", &format!("prediction {id}")).await?;
    let rows = store.erase_prediction(id).await?;
    let lines = match log {
        Some(l) => {
            let ids = HashSet::from([id.to_string()]);
            l.off_thread(move |l| l.erase_ids(&ids)).await?
        }
        None => 0,
    };
    Ok(Removed { rows, inference_log_lines: lines })
}

/// Erases everything created before `before` (rows, feedback, log lines), audited.
pub async fn erase_before(
    store: &Store,
    log: Option<&LogFiles>,
    before: DateTime<Utc>,
    now: DateTime<Utc>,
    actor: &str,
) -> Result<Removed, RetentionError> {
    store.audit(now, actor, "erase", &format!("everything before {}", before.to_rfc3339())).await?;
    let rows = store.erase_before(before).await?;
    let lines = match log {
        Some(l) => l.off_thread(move |l| l.remove_before(before)).await?,
        None => 0,
    };
    Ok(Removed { rows, inference_log_lines: lines })
}
