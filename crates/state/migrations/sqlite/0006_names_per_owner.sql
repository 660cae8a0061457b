-- Names are unique per owner (each tenant of a coved has its own namespace; local use is
-- the owner-less one), so the column-level UNIQUE goes: SQLite drops a constraint only by
-- rebuilding the table. `events_at` serves the retention sweep.
CREATE TABLE sandboxes_new (
    id          TEXT PRIMARY KEY,
    name        TEXT,
    image       TEXT NOT NULL,
    state       TEXT NOT NULL,
    cpus        INTEGER NOT NULL,
    memory_mib  INTEGER NOT NULL,
    disk_mib    INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    engine      TEXT NOT NULL,
    accel       TEXT NOT NULL,
    pid         INTEGER,
    socket      TEXT NOT NULL,
    dir         TEXT NOT NULL,
    boot_ms     INTEGER,
    reason      TEXT,
    image_digest TEXT NOT NULL DEFAULT '',
    owner       TEXT,
    labels      TEXT NOT NULL DEFAULT '{}',
    env         TEXT NOT NULL DEFAULT '{}'
);
INSERT INTO sandboxes_new (id, name, image, state, cpus, memory_mib, disk_mib, created_at, engine, accel, pid, socket, dir, boot_ms, reason, image_digest, owner, labels, env)
    SELECT id, name, image, state, cpus, memory_mib, disk_mib, created_at, engine, accel, pid, socket, dir, boot_ms, reason, image_digest, owner, labels, env FROM sandboxes;
DROP TABLE sandboxes;
ALTER TABLE sandboxes_new RENAME TO sandboxes;
CREATE INDEX sandboxes_owner ON sandboxes (owner);
CREATE UNIQUE INDEX sandboxes_name ON sandboxes (coalesce(owner, ''), name);
CREATE TABLE snapshots_new (
    id          TEXT PRIMARY KEY,
    name        TEXT,
    sandbox     TEXT,
    image       TEXT NOT NULL,
    cpus        INTEGER NOT NULL,
    memory_mib  INTEGER NOT NULL,
    disk_mib    INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    dir         TEXT NOT NULL,
    template    INTEGER NOT NULL DEFAULT 0,
    image_digest TEXT NOT NULL DEFAULT '',
    owner       TEXT
);
INSERT INTO snapshots_new (id, name, sandbox, image, cpus, memory_mib, disk_mib, created_at, dir, template, image_digest, owner)
    SELECT id, name, sandbox, image, cpus, memory_mib, disk_mib, created_at, dir, template, image_digest, owner FROM snapshots;
DROP TABLE snapshots;
ALTER TABLE snapshots_new RENAME TO snapshots;
CREATE UNIQUE INDEX snapshots_name ON snapshots (coalesce(owner, ''), name);
CREATE INDEX events_at ON events (at);
