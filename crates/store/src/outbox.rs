//! Prediction rows waiting for the database: kept in order while it is down, retried by
//! the server's maintenance loop, spilled to a JSON-lines file at shutdown and restored at
//! the next start, so that an outage loses no prediction.
//!
//! The spill file is removed only once every restored row is written (a crash in between
//! writes them again, which the store ignores), rows that arrive after the spill (requests
//! that finished after the shutdown grace period) are appended to it, and an erasure
//! removes its row from the queue and from the file.
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{Inserted, PredictionRecord, Store, StoreError};

/// The spill file's name, in the server's data folder.
pub const SPILL_FILE: &str = "pending-predictions.jsonl";

/// Most prediction rows kept in memory while the database is down.
pub const OUTBOX_CAPACITY: usize = 100_000;

/// Prediction rows that could not be written yet; retried in order, spilled to disk at shutdown.
#[derive(Default)]
pub struct Outbox {
    rows: Mutex<VecDeque<PredictionRecord>>,
    flushing: tokio::sync::Mutex<()>,
    pub dropped: AtomicU64,
    /// The spill file restored rows came from: removed once they are all written.
    restored_from: Mutex<Option<PathBuf>>,
    /// Set by [`Outbox::spill`]: later rows go straight to this file.
    spilled_to: Mutex<Option<PathBuf>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One JSON line per row.
fn json_lines(rows: &[PredictionRecord]) -> std::io::Result<String> {
    let mut text = String::new();
    for r in rows {
        text.push_str(&serde_json::to_string(r).map_err(std::io::Error::other)?);
        text.push('\n');
    }
    Ok(text)
}

/// The rows of a spill file (unreadable lines are reported and skipped); none when absent.
fn read_spilled(path: &Path) -> std::io::Result<Vec<PredictionRecord>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut rows = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match serde_json::from_str(line) {
            Ok(r) => rows.push(r),
            Err(e) => tracing::error!(error = %e, "skipping unreadable spilled prediction row"),
        }
    }
    Ok(rows)
}

/// Replaces a spill file with `rows` (temporary file + rename: never half written).
fn write_spilled(path: &Path, rows: &[PredictionRecord]) -> std::io::Result<()> {
    if rows.is_empty() {
        return match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
    }
    let tmp = path.with_extension("jsonl.tmp");
    crate::private::write(&tmp, json_lines(rows)?)?;
    std::fs::rename(&tmp, path)
}

impl Outbox {
    pub fn push(&self, rec: PredictionRecord) {
        if let Some(path) = lock(&self.spilled_to).clone() {
            // After the shutdown spill: straight to the file, the process is about to exit.
            let appended = json_lines(std::slice::from_ref(&rec)).and_then(|line| {
                use std::io::Write;
                crate::private::append(&path)?.write_all(line.as_bytes())
            });
            if let Err(e) = appended {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "a prediction row that finished after shutdown could not be saved");
            }
            return;
        }
        let mut q = self.rows.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if q.len() >= OUTBOX_CAPACITY {
            q.pop_front();
            self.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::error!("outbox full: oldest unsaved prediction row dropped");
        }
        q.push_back(rec);
    }
    fn front(&self) -> Option<PredictionRecord> {
        self.rows.lock().unwrap_or_else(std::sync::PoisonError::into_inner).front().cloned()
    }
    fn remove_front(&self, id: &str) {
        let mut q = self.rows.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if q.front().is_some_and(|r| r.id == id) {
            q.pop_front();
        }
    }
    /// Drops the queued rows of an erased prediction, in memory and in the spill file the
    /// queue was restored from; returns them.
    pub fn remove(&self, id: &str) -> std::io::Result<Vec<PredictionRecord>> {
        self.remove_where(&|r| r.id == id)
    }

    /// Drops the queued rows for which `erased` holds (an erasure by id or by date), in
    /// memory and in the spill file the queue was restored from; returns them.
    pub fn remove_where(&self, erased: &dyn Fn(&PredictionRecord) -> bool) -> std::io::Result<Vec<PredictionRecord>> {
        let mut removed = Vec::new();
        lock(&self.rows).retain(|r| {
            let gone = erased(r);
            if gone {
                removed.push(r.clone());
            }
            !gone
        });
        if let Some(path) = lock(&self.restored_from).clone() {
            removed.extend(remove_spilled_where(&path, erased)?);
        }
        Ok(removed)
    }
    pub fn len(&self) -> usize {
        self.rows.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn take_all(&self) -> Vec<PredictionRecord> {
        self.rows.lock().unwrap_or_else(std::sync::PoisonError::into_inner).drain(..).collect()
    }

    /// Writes queued rows in order; stops at the first failure. A row leaves the queue only
    /// once written, so it stays visible (readiness, spill at shutdown) while a write is tried.
    /// Once the queue is empty, the spill file it was restored from is removed.
    pub async fn flush(&self, store: &Store) -> Result<usize, StoreError> {
        let _one_writer = self.flushing.lock().await;
        let mut n = 0;
        while let Some(rec) = self.front() {
            match store.insert_prediction(&rec).await {
                Ok(Inserted::New) => n += 1,
                Ok(Inserted::AlreadyThere) => {}
                Ok(Inserted::Erased) => tracing::info!("a queued row of an erased prediction was dropped"),
                Err(e) if e.is_unavailable() => return Err(e),
                Err(e) => {
                    tracing::error!(error = %e, "prediction row rejected by the database; dropped");
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            self.remove_front(&rec.id);
        }
        let restored = lock(&self.restored_from).take();
        if let Some(path) = restored
            && let Err(e) = std::fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(error = %e, "cannot remove the spill file; its rows are written and will be skipped");
        }
        Ok(n)
    }

    /// Saves queued rows as JSON lines (at shutdown, when the database is still down),
    /// replacing the file; rows pushed afterwards are appended to it.
    pub fn spill(&self, path: &Path) -> std::io::Result<usize> {
        let rows = self.take_all();
        // Restored rows not yet written are part of the queue: the file is rewritten whole.
        write_spilled(path, &rows)?;
        *lock(&self.restored_from) = None;
        *lock(&self.spilled_to) = Some(path.to_path_buf());
        Ok(rows.len())
    }

    /// Loads rows spilled by an earlier run; the file stays until they are written.
    pub fn restore(&self, path: &Path) -> std::io::Result<usize> {
        let rows = read_spilled(path)?;
        let n = rows.len();
        for r in rows {
            self.push(r);
        }
        if n > 0 {
            *lock(&self.restored_from) = Some(path.to_path_buf());
        }
        Ok(n)
    }
}

/// Removes the rows of prediction `id` from a spill file (an erasure while the server is
/// stopped, or before its restored rows are written); returns them.
pub fn remove_spilled(path: &Path, id: &str) -> std::io::Result<Vec<PredictionRecord>> {
    remove_spilled_where(path, &|r| r.id == id)
}

/// Removes the rows for which `erased` holds from a spill file; returns them.
pub fn remove_spilled_where(
    path: &Path,
    erased: &dyn Fn(&PredictionRecord) -> bool,
) -> std::io::Result<Vec<PredictionRecord>> {
    let rows = read_spilled(path)?;
    let (removed, kept): (Vec<_>, Vec<_>) = rows.into_iter().partition(|r| erased(r));
    if !removed.is_empty() {
        write_spilled(path, &kept)?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{PredictionId, PredictionStatus};

    fn row(id: &str) -> PredictionRecord {
        PredictionRecord {
            id: id.into(),
            created_at: chrono::Utc::now(),
            model_version: "m".into(),
            status: PredictionStatus::Ok,
            label: None,
            p_dog: Some(0.5),
            latency_ms: 1.0,
            error_code: None,
            file_ref: None,
            image_ref: Some("ab/cd.png".into()),
            owner: None,
            signals: None,
        }
    }

    fn ids(rows: &[PredictionRecord]) -> Vec<String> {
        rows.iter().map(|r| r.id.clone()).collect()
    }

    #[tokio::test]
    async fn the_spill_file_goes_only_once_its_rows_are_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pending.jsonl");
        let (a, b) = (PredictionId::new().to_string(), PredictionId::new().to_string());
        let first = Outbox::default();
        first.push(row(&a));
        first.push(row(&b));
        assert_eq!(first.spill(&path).expect("spill"), 2);
        // A request that finishes after the spill: appended, not lost.
        let late = PredictionId::new().to_string();
        first.push(row(&late));
        assert_eq!(ids(&read_spilled(&path).expect("read")), [a.clone(), b.clone(), late.clone()]);

        // The next start restores them; the file stays while they wait for the database.
        let next = Outbox::default();
        assert_eq!(next.restore(&path).expect("restore"), 3);
        assert!(path.exists(), "removed before its rows were written");
        // An erasure meanwhile removes the row from the queue and from the file.
        assert_eq!(ids(&next.remove(&b).expect("remove")), [b.clone(), b.clone()]);
        assert_eq!(ids(&read_spilled(&path).expect("read")), [a.clone(), late.clone()]);
        assert_eq!(next.len(), 2);
        // An erasure by date: nothing queued is older than an hour ago.
        let hour_ago = chrono::Utc::now() - chrono::Duration::hours(1);
        assert!(next.remove_where(&|r| r.created_at < hour_ago).expect("remove").is_empty());
        assert_eq!(next.len(), 2);

        // Written (twice: a crash after the write and before the removal): file removed.
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = Store::open(&url, &crate::StoreOptions::default()).expect("open");
        store.migrate().await.expect("migrate");
        store.insert_prediction(&row(&a)).await.expect("insert before the crash");
        assert_eq!(next.flush(&store).await.expect("flush"), 1, "the row written before the crash is skipped");
        assert!(!path.exists());
        assert!(store.get_prediction(&late).await.expect("get").is_some());
    }
}
