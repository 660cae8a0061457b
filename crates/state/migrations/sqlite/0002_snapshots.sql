CREATE TABLE snapshots (
    id          TEXT PRIMARY KEY,
    name        TEXT UNIQUE,
    sandbox     TEXT,
    image       TEXT NOT NULL,
    cpus        INTEGER NOT NULL,
    memory_mib  INTEGER NOT NULL,
    disk_mib    INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    dir         TEXT NOT NULL,
    template    INTEGER NOT NULL DEFAULT 0
);
