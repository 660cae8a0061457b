-- The process that last wrote each sandbox (`PID:START`): a record left in the middle of
-- an operation by a process that is gone was interrupted, and is reconciled at once.
ALTER TABLE sandboxes ADD COLUMN op TEXT;
