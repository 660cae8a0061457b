-- Every state a sandbox enters (and its removal), with who asked and why: the event log.
CREATE TABLE events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    at          INTEGER NOT NULL,
    sandbox     TEXT NOT NULL,
    owner       TEXT,
    state       TEXT NOT NULL,
    actor       TEXT NOT NULL,
    cause       TEXT
);
CREATE INDEX events_owner ON events (owner, seq);
