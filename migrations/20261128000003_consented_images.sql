-- Opt-in image retention: a prediction whose uploader consented keeps a reference to the
-- image file (content-addressed, '<sha256>.<ext>' under the data directory's images/
-- folder). The bytes never enter the database; erasing or purging the row removes the file.
ALTER TABLE predictions ADD COLUMN image_ref TEXT;
