-- Which browser session made a prediction, as a keyed hash (HMAC of the session id under
-- the pseudonymisation key; never the id itself). A visitor may give feedback only on
-- predictions whose owner is its own session; rows made with a token have no owner.
ALTER TABLE predictions ADD COLUMN owner TEXT;
