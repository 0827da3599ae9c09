-- Feedback outlives its prediction (365 vs 180 days of retention): deleting a prediction
-- now sets feedback.prediction_id to NULL instead of cascading. With a cascade, feedback
-- committed while the purge deleted its prediction could be removed by the purge on
-- PostgreSQL. Erasure deletes feedback explicitly. Neither SQLite nor a portable ALTER can
-- change a foreign key in place: the table is rebuilt (same columns, same indexes).

DROP VIEW feedback_user;

CREATE TABLE feedback_v2 (
    id            TEXT PRIMARY KEY,
    prediction_id TEXT REFERENCES predictions (id) ON DELETE SET NULL,  -- NULL for the seed's body or once purged
    created_at_ms BIGINT NOT NULL,
    day           TEXT NOT NULL,
    positive      BOOLEAN NOT NULL,
    true_label    TEXT,
    p_dog         DOUBLE PRECISION,
    comment       TEXT,
    source        TEXT NOT NULL
);
INSERT INTO feedback_v2 (id, prediction_id, created_at_ms, day, positive, true_label, p_dog, comment, source)
SELECT id, prediction_id, created_at_ms, day, positive, true_label, p_dog, comment, source FROM feedback;
DROP TABLE feedback;
ALTER TABLE feedback_v2 RENAME TO feedback;
CREATE UNIQUE INDEX feedback_prediction ON feedback (prediction_id);
CREATE INDEX feedback_day ON feedback (day);

CREATE VIEW feedback_user AS
SELECT ROW_NUMBER() OVER (ORDER BY f.created_at_ms, f.id) AS id_feedback_user,
       f.positive                                          AS feedback,
       f.day                                               AS date_feedback,
       f.p_dog                                             AS resultat_prediction,
       f.comment                                           AS input_user,
       p.latency_ms                                        AS inference_time_ms,
       (p.status IS NULL OR p.status = 'ok')               AS success
FROM feedback f
LEFT JOIN predictions p ON p.id = f.prediction_id;
