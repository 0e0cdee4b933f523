-- The usage ledger: one row per upstream attempt (see crates/bourse/src/ledger.rs).
-- Same meaning as migrations/postgres/0001_ledger.sql; SQLite stores bools as 0/1.
CREATE TABLE ledger (
    -- A surrogate key: request_id is not unique (clients may send their own x-request-id).
    id INTEGER PRIMARY KEY,
    request_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    ts_ms INTEGER NOT NULL,
    key_id TEXT,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    route_reason TEXT,
    input_uncached INTEGER NOT NULL,
    input_cache_read INTEGER NOT NULL,
    input_cache_write INTEGER NOT NULL,
    output INTEGER NOT NULL,
    output_reasoning INTEGER NOT NULL,
    cost_nanos INTEGER NOT NULL,
    reference_cost_nanos INTEGER NOT NULL,
    catalog_version TEXT NOT NULL,
    ttfb_ms INTEGER,
    latency_ms INTEGER NOT NULL,
    status INTEGER NOT NULL,
    error_kind TEXT,
    estimated INTEGER NOT NULL CHECK (estimated IN (0, 1)),
    stream INTEGER NOT NULL CHECK (stream IN (0, 1))
);

-- Reports filter by time; tools look rows up by request.
CREATE INDEX ledger_ts_ms ON ledger (ts_ms);
CREATE INDEX ledger_request_id ON ledger (request_id, attempt);
