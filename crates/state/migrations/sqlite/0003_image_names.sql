-- Images are content-addressed (cove-image); names point at manifest digests, and what
-- a sandbox or snapshot runs on is pinned by digest, so re-pointing a name moves nothing.
CREATE TABLE image_names (
    name        TEXT PRIMARY KEY,
    digest      TEXT NOT NULL,
    updated_at  INTEGER NOT NULL
);
ALTER TABLE sandboxes ADD COLUMN image_digest TEXT NOT NULL DEFAULT '';
ALTER TABLE snapshots ADD COLUMN image_digest TEXT NOT NULL DEFAULT '';
