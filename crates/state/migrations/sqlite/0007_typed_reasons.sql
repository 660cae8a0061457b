-- Reasons become typed (`reason_kind` the kind, `reason` its detail) and each sandbox
-- records when its state last changed. Rows written before are converted from the
-- sentences this build's older versions wrote; events by `cove-vm` name their true actor.
ALTER TABLE sandboxes ADD COLUMN reason_kind TEXT;
ALTER TABLE sandboxes ADD COLUMN updated_at INTEGER NOT NULL DEFAULT 0;
UPDATE sandboxes SET updated_at = created_at;
UPDATE sandboxes SET reason_kind = CASE
    WHEN reason = 'idle' THEN 'idle'
    WHEN reason = 'stopped' THEN 'stopped'
    WHEN reason LIKE 'stopped: its time to live%' THEN 'expired'
    WHEN reason LIKE 'resume failed: %' THEN 'resume_failed'
    WHEN reason LIKE 'not in the blob store: %' THEN 'not_stored'
    WHEN reason LIKE 'failed to start: %' THEN 'start_failed'
    WHEN reason LIKE 'its cove-vm process vanished%' THEN 'vanished'
    ELSE 'crashed' END
  WHERE reason IS NOT NULL;
UPDATE sandboxes SET reason = NULL WHERE reason_kind IN ('idle', 'stopped', 'expired', 'vanished');
UPDATE sandboxes SET reason = substr(reason, 16) WHERE reason_kind = 'resume_failed';
UPDATE sandboxes SET reason = substr(reason, 24) WHERE reason_kind = 'not_stored';
UPDATE sandboxes SET reason = substr(reason, 18) WHERE reason_kind = 'start_failed';
UPDATE events SET actor = CASE
    WHEN cause = 'idle' THEN 'idle-policy'
    WHEN cause LIKE '%time to live%' THEN 'ttl'
    ELSE 'reconcile' END
  WHERE actor = 'cove-vm';
