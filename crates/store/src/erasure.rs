//! Tombstones of erased predictions. An erasure records a keyed hash of the id before it
//! deletes anything; every later write of that id (a row restored from the spill file, a
//! row queued during an outage, another replica's late write) is dropped, so nothing
//! erased comes back. The hash is HMAC-SHA256 under the pseudonymisation key: the table
//! holds no id, and ids cannot be recovered by hashing guesses without the key.
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::{Store, StoreError};

/// The key tombstones are made with: the replicas' shared pseudonymisation key.
#[derive(Clone)]
pub struct ErasureKey([u8; 32]);

impl std::fmt::Debug for ErasureKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ErasureKey(..)")
    }
}

impl ErasureKey {
    /// From the 32-byte key the server derives from its `pseudonym-key` secret.
    pub fn new(key: [u8; 32]) -> Self {
        Self(key)
    }

    /// From the text of the `pseudonym-key` secret file, derived as the server does.
    pub fn from_secret(secret: &str) -> Self {
        Self(Sha256::digest(secret.trim().as_bytes()).into())
    }

    /// The tombstone of one prediction id (hex).
    pub fn tombstone(&self, id: &str) -> String {
        // HMAC accepts keys of any length: this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).unwrap_or_else(|_| unreachable!());
        mac.update(b"erased-prediction|");
        mac.update(id.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }
}

/// An erasure whose files (inference-log lines, consented image) are not all removed yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingErasure {
    pub tombstone: String,
    pub image_ref: Option<String>,
}

impl Store {
    /// The key tombstones are made with, when the store was opened with one.
    pub fn erasure_key(&self) -> Option<&ErasureKey> {
        self.erasure_key.as_ref()
    }

    /// Records the tombstone and the audit row in one transaction, before anything is
    /// deleted: an erasure that cannot be recorded (database down) removes nothing.
    pub async fn record_erasure(
        &self,
        tombstone: &str,
        at: chrono::DateTime<chrono::Utc>,
        actor: &str,
        detail: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO erasures (id_hash, erased_at_ms, files_pending) VALUES ($1, $2, 1) \
             ON CONFLICT (id_hash) DO UPDATE SET files_pending = 1",
        )
        .bind(tombstone)
        .bind(at.timestamp_millis())
        .execute(&mut *tx)
        .await?;
        crate::audit_row(at, actor, "erase", detail).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Whether this id was erased.
    pub async fn is_erased(&self, tombstone: &str) -> Result<bool, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM erasures WHERE id_hash = $1")
            .bind(tombstone)
            .fetch_one(&self.pool)
            .await?;
        Ok(n > 0)
    }

    /// Keeps the image still to delete with a tombstone whose files could not all be removed.
    pub async fn erasure_files_pending(&self, tombstone: &str, image_ref: Option<&str>) -> Result<(), StoreError> {
        sqlx::query("UPDATE erasures SET files_pending = 1, image_ref = $2 WHERE id_hash = $1")
            .bind(tombstone)
            .bind(image_ref)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Marks an erasure's files as removed.
    pub async fn erasure_files_done(&self, tombstone: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE erasures SET files_pending = 0, image_ref = NULL WHERE id_hash = $1")
            .bind(tombstone)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Erasures whose files are still to remove (retried by the server's maintenance).
    pub async fn pending_erasures(&self, limit: u32) -> Result<Vec<PendingErasure>, StoreError> {
        let rows = sqlx::query("SELECT id_hash, image_ref FROM erasures WHERE files_pending = 1 LIMIT $1")
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok(PendingErasure { tombstone: r.try_get("id_hash")?, image_ref: r.try_get("image_ref")? }))
            .collect()
    }

    /// Forgets tombstones older than `before` (the predictions' retention: anything that
    /// could bring such a row back would be purged as too old anyway).
    pub async fn purge_tombstones(&self, before: chrono::DateTime<chrono::Utc>) -> Result<u64, StoreError> {
        Ok(sqlx::query("DELETE FROM erasures WHERE erased_at_ms < $1 AND files_pending = 0")
            .bind(before.timestamp_millis())
            .execute(&self.pool)
            .await?
            .rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tombstones_are_keyed_and_stable() {
        let a = ErasureKey::from_secret("secret-a\n");
        let b = ErasureKey::from_secret("secret-b");
        let id = "0b7a5d3e-6f41-4c09-9a51-2f4e8c1d7a10";
        assert_eq!(a.tombstone(id), ErasureKey::from_secret("secret-a").tombstone(id), "the file's newline is trimmed");
        assert_ne!(a.tombstone(id), b.tombstone(id), "another key, another tombstone");
        assert_ne!(a.tombstone(id), a.tombstone("another id"));
        assert!(!a.tombstone(id).contains(id));
        assert_eq!(a.tombstone(id).len(), 64);
    }

    #[tokio::test]
    async fn a_row_of_an_erased_id_is_never_written_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let key = ErasureKey::from_secret("k");
        let options = crate::StoreOptions { erasure_key: Some(key.clone()), ..crate::StoreOptions::default() };
        let store = Store::open(&url, &options).expect("open");
        store.migrate().await.expect("migrate");
        let row = |id: &str| crate::PredictionRecord {
            id: id.into(),
            created_at: chrono::Utc::now(),
            model_version: "m".into(),
            status: crate::PredictionStatus::Ok,
            label: None,
            p_dog: Some(0.5),
            latency_ms: 1.0,
            error_code: None,
            file_ref: None,
            image_ref: None,
            owner: None,
            signals: None,
        };
        let (erased, kept) = (crate::PredictionId::new().to_string(), crate::PredictionId::new().to_string());
        store.record_erasure(&key.tombstone(&erased), chrono::Utc::now(), "test", "erase").await.expect("tombstone");
        assert_eq!(store.insert_prediction(&row(&erased)).await.expect("insert"), crate::Inserted::Erased);
        assert!(store.get_prediction(&erased).await.expect("get").is_none());
        assert_eq!(store.insert_prediction(&row(&kept)).await.expect("insert"), crate::Inserted::New);
        assert_eq!(store.insert_prediction(&row(&kept)).await.expect("insert"), crate::Inserted::AlreadyThere);
        // The tombstone outlives nothing it must not: purged with the predictions' retention.
        store.erasure_files_done(&key.tombstone(&erased)).await.expect("done");
        let later = chrono::Utc::now() + chrono::Duration::days(1);
        assert_eq!(store.purge_tombstones(later).await.expect("purge"), 1);
        assert_eq!(store.insert_prediction(&row(&erased)).await.expect("insert"), crate::Inserted::New);
    }
}
