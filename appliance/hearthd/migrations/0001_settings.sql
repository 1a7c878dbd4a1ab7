-- Settings a person changes from the UI, as key/value text.
CREATE TABLE settings (
    key        TEXT PRIMARY KEY NOT NULL,
    value      TEXT NOT NULL,
    updated_at INTEGER NOT NULL DEFAULT (unixepoch())
) STRICT;

-- One row per start of hearthd: when, and which version, so upgrades and rollbacks show.
CREATE TABLE boots (
    id         INTEGER PRIMARY KEY,
    started_at INTEGER NOT NULL DEFAULT (unixepoch()),
    version    TEXT NOT NULL
) STRICT;
