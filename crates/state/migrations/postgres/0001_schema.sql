-- The whole schema as the SQLite migrations leave it (0001-0008), for a new PostgreSQL
-- database: several hosts share it, so names, events and image names are one namespace.
CREATE TABLE sandboxes (
    id           TEXT PRIMARY KEY,
    name         TEXT,
    image        TEXT NOT NULL,
    state        TEXT NOT NULL,
    cpus         INTEGER NOT NULL,
    memory_mib   INTEGER NOT NULL,
    disk_mib     INTEGER NOT NULL,
    created_at   BIGINT NOT NULL,
    engine       TEXT NOT NULL,
    accel        TEXT NOT NULL,
    pid          INTEGER,
    socket       TEXT NOT NULL,
    dir          TEXT NOT NULL,
    boot_ms      BIGINT,
    reason       TEXT,
    image_digest TEXT NOT NULL DEFAULT '',
    owner        TEXT,
    labels       TEXT NOT NULL DEFAULT '{}',
    env          TEXT NOT NULL DEFAULT '{}',
    reason_kind  TEXT,
    updated_at   BIGINT NOT NULL DEFAULT 0,
    op           TEXT
);
CREATE INDEX sandboxes_owner ON sandboxes (owner);
CREATE UNIQUE INDEX sandboxes_name ON sandboxes ((coalesce(owner, '')), name);

CREATE TABLE snapshots (
    id           TEXT PRIMARY KEY,
    name         TEXT,
    sandbox      TEXT,
    image        TEXT NOT NULL,
    cpus         INTEGER NOT NULL,
    memory_mib   INTEGER NOT NULL,
    disk_mib     INTEGER NOT NULL,
    created_at   BIGINT NOT NULL,
    dir          TEXT NOT NULL,
    template     BOOLEAN NOT NULL DEFAULT FALSE,
    image_digest TEXT NOT NULL DEFAULT '',
    owner        TEXT
);
CREATE UNIQUE INDEX snapshots_name ON snapshots ((coalesce(owner, '')), name);

CREATE TABLE image_names (
    name       TEXT PRIMARY KEY,
    digest     TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE events (
    seq     BIGSERIAL PRIMARY KEY,
    at      BIGINT NOT NULL,
    sandbox TEXT NOT NULL,
    owner   TEXT,
    state   TEXT NOT NULL,
    actor   TEXT NOT NULL,
    cause   TEXT
);
CREATE INDEX events_owner ON events (owner, seq);
CREATE INDEX events_at ON events (at);
