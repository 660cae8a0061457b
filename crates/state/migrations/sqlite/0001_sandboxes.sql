CREATE TABLE sandboxes (
    id          TEXT PRIMARY KEY,
    name        TEXT UNIQUE,
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
    reason      TEXT
);
