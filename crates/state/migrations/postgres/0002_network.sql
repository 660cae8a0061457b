-- Each sandbox's network policy (JSON, cove_model::NetworkPolicy). Sandboxes from before
-- networks had no network device: mode none.
ALTER TABLE sandboxes ADD COLUMN network TEXT NOT NULL DEFAULT '{"mode":"none"}';
