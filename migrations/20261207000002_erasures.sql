-- Tombstones: the keyed hash (HMAC-SHA256 under the pseudonymisation key) of every erased
-- prediction id, never the id. Recorded before anything is deleted; a later write of that
-- id (a restored or queued row, another replica's late write) is dropped. Kept as long as
-- predictions are (what could bring a row back is older than that).
CREATE TABLE erasures (
    id_hash       TEXT PRIMARY KEY,
    erased_at_ms  BIGINT NOT NULL,
    files_pending INTEGER NOT NULL DEFAULT 1,  -- 1 until its log lines and image are gone
    image_ref     TEXT                         -- the consented image still to delete, if any
);
CREATE INDEX erasures_pending ON erasures (files_pending);
CREATE INDEX erasures_erased ON erasures (erased_at_ms);

-- The purge and erasure queries at millions of rows.
CREATE INDEX predictions_image_ref ON predictions (image_ref);
CREATE INDEX feedback_created ON feedback (created_at_ms);
