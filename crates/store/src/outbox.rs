//! Prediction rows waiting for the database: kept in order while it is down, retried by
//! the server's maintenance loop, spilled to a JSON-lines file at shutdown and restored at
//! the next start, so that an outage loses no prediction.
use std::collections::VecDeque;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{PredictionRecord, Store, StoreError};

/// Most prediction rows kept in memory while the database is down.
pub const OUTBOX_CAPACITY: usize = 100_000;

/// Prediction rows that could not be written yet; retried in order, spilled to disk at shutdown.
#[derive(Default)]
pub struct Outbox {
    rows: Mutex<VecDeque<PredictionRecord>>,
    flushing: tokio::sync::Mutex<()>,
    pub dropped: AtomicU64,
}

impl Outbox {
    pub fn push(&self, rec: PredictionRecord) {
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
    /// Drops a queued row (erasure of a prediction the database has not seen yet) and
    /// returns it.
    pub fn remove(&self, id: &str) -> Option<PredictionRecord> {
        let mut q = self.rows.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let i = q.iter().position(|r| r.id == id)?;
        q.remove(i)
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
    pub async fn flush(&self, store: &Store) -> Result<usize, StoreError> {
        let _one_writer = self.flushing.lock().await;
        let mut n = 0;
        while let Some(rec) = self.front() {
            match store.insert_prediction(&rec).await {
                Ok(()) => n += 1,
                Err(e) if e.is_unavailable() => return Err(e),
                Err(e) => {
                    tracing::error!(error = %e, id = %rec.id, "prediction row rejected by the database; dropped");
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            self.remove_front(&rec.id);
        }
        Ok(n)
    }

    /// Saves queued rows as JSON lines (at shutdown, when the database is still down).
    pub fn spill(&self, path: &Path) -> std::io::Result<usize> {
        let rows = self.take_all();
        if rows.is_empty() {
            return Ok(0);
        }
        let mut text = String::new();
        for r in &rows {
            text.push_str(&serde_json::to_string(r).map_err(std::io::Error::other)?);
            text.push('\n');
        }
        use std::io::Write;
        let mut f = crate::private::append(path)?;
        f.write_all(text.as_bytes())?;
        Ok(rows.len())
    }

    /// Loads rows spilled by an earlier run and removes the file.
    pub fn restore(&self, path: &Path) -> std::io::Result<usize> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let mut n = 0;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            match serde_json::from_str(line) {
                Ok(r) => {
                    self.push(r);
                    n += 1;
                }
                Err(e) => tracing::error!(error = %e, "skipping unreadable spilled prediction row"),
            }
        }
        std::fs::remove_file(path)?;
        Ok(n)
    }
}
