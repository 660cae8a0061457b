-- Who a sandbox or snapshot belongs to (coved's tenant; none for local use), the sandbox's
-- labels, and the environment every exec in it gets (JSON).
ALTER TABLE sandboxes ADD COLUMN owner TEXT;
ALTER TABLE sandboxes ADD COLUMN labels TEXT NOT NULL DEFAULT '{}';
ALTER TABLE sandboxes ADD COLUMN env TEXT NOT NULL DEFAULT '{}';
ALTER TABLE snapshots ADD COLUMN owner TEXT;
CREATE INDEX sandboxes_owner ON sandboxes (owner);
