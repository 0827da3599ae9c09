-- The metrics routes group a window of days in SQL: one index holding every column they
-- read, in the order they read it (day, then status, then latency), so that both the sums
-- and the per-day latency ranks are read from the index alone, already in order. It
-- replaces the index on day alone, which is its prefix.
DROP INDEX predictions_day;
CREATE INDEX predictions_metrics ON predictions (day, status, latency_ms, label, p_dog);
