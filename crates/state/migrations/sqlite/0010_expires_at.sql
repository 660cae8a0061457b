-- When each sandbox's time to live ends (milliseconds since the epoch); none: it has none.
ALTER TABLE sandboxes ADD COLUMN expires_at INTEGER;
