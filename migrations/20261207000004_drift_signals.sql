-- What drift monitoring keeps of a prediction, as JSON: the 32-number embedding the graph
-- outputs, brightness/contrast/saturation of the model input, the upload's size and the
-- "neither" flag. Derived from the user's photo (never the photo): purged, exported and
-- erased with its row. NULL for failed predictions and rows written before this column.
ALTER TABLE predictions ADD COLUMN signals TEXT;
