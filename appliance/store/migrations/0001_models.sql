-- The model catalogue. One row per stored model; the blob is models/blobs/<digest>.
CREATE TABLE models (
    name TEXT PRIMARY KEY,
    digest TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    architecture TEXT NOT NULL,
    parameters INTEGER NOT NULL,
    quantization TEXT NOT NULL,
    context_length INTEGER NOT NULL,
    has_chat_template INTEGER NOT NULL,
    license TEXT,
    added_at INTEGER NOT NULL,
    source TEXT NOT NULL,
    -- 'ok' or 'damaged' (failed a scrub; the blob is in quarantine/)
    state TEXT NOT NULL DEFAULT 'ok',
    n_layer INTEGER NOT NULL,
    n_kv_head INTEGER NOT NULL,
    head_dim INTEGER NOT NULL
);

CREATE TABLE settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
