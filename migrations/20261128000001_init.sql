-- One schema for SQLite and PostgreSQL: only types and syntax both accept
-- (TEXT, BIGINT, DOUBLE PRECISION, BOOLEAN, window functions, partial-free indexes).
-- Times are UTC milliseconds since the epoch plus the UTC day as 'YYYY-MM-DD',
-- so daily metrics group the same way on both databases.

CREATE TABLE predictions (
    id            TEXT PRIMARY KEY,            -- UUID returned to the client
    created_at_ms BIGINT NOT NULL,
    day           TEXT NOT NULL,
    model_version TEXT NOT NULL,
    status        TEXT NOT NULL,               -- 'ok' or 'error'
    label         TEXT,                        -- 'cat' / 'dog' when status = 'ok'
    p_dog         DOUBLE PRECISION,
    latency_ms    DOUBLE PRECISION NOT NULL,
    error_code    TEXT,                        -- stable error code when status = 'error'
    file_ref      TEXT                         -- pseudonymised file name; never the raw name, never the bytes
);
CREATE INDEX predictions_day ON predictions (day);
CREATE INDEX predictions_created ON predictions (created_at_ms);

CREATE TABLE feedback (
    id            TEXT PRIMARY KEY,
    prediction_id TEXT REFERENCES predictions (id) ON DELETE CASCADE,  -- NULL for the seed's body
    created_at_ms BIGINT NOT NULL,
    day           TEXT NOT NULL,
    positive      BOOLEAN NOT NULL,            -- the user says the prediction was right
    true_label    TEXT,                        -- 'cat' / 'dog' when the user named it
    p_dog         DOUBLE PRECISION,            -- the seed's resultat_prediction, or the prediction's p_dog
    comment       TEXT,                        -- the seed's input_user
    source        TEXT NOT NULL                -- 'seed' or 'v2'
);
-- One feedback per prediction; a second one replaces the first (documented policy).
CREATE UNIQUE INDEX feedback_prediction ON feedback (prediction_id);
CREATE INDEX feedback_day ON feedback (day);

CREATE TABLE audit_log (
    id       TEXT PRIMARY KEY,
    at_ms    BIGINT NOT NULL,
    actor    TEXT NOT NULL,                    -- token fingerprint, never the token
    action   TEXT NOT NULL,
    detail   TEXT
);
CREATE INDEX audit_log_at ON audit_log (at_ms);

-- The seed's table, as a view, so its SQL queries keep working.
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
