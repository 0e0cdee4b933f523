-- The usage ledger: one row per upstream attempt (see crates/bourse/src/ledger.rs).
-- Same meaning as migrations/sqlite/0001_ledger.sql. Counts that are u32/u64 in Rust are
-- bigint so every value the gateway can produce fits; status (u16) fits integer.
CREATE TABLE ledger (
    -- A surrogate key: request_id is not unique (clients may send their own x-request-id).
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    request_id text NOT NULL,
    attempt bigint NOT NULL,
    ts_ms bigint NOT NULL,
    key_id text,
    provider text NOT NULL,
    model text NOT NULL,
    route_reason text,
    input_uncached bigint NOT NULL,
    input_cache_read bigint NOT NULL,
    input_cache_write bigint NOT NULL,
    output bigint NOT NULL,
    output_reasoning bigint NOT NULL,
    cost_nanos bigint NOT NULL,
    reference_cost_nanos bigint NOT NULL,
    catalog_version text NOT NULL,
    ttfb_ms bigint,
    latency_ms bigint NOT NULL,
    status integer NOT NULL,
    error_kind text,
    estimated boolean NOT NULL,
    stream boolean NOT NULL
);

-- Reports filter by time; tools look rows up by request.
CREATE INDEX ledger_ts_ms ON ledger (ts_ms);
CREATE INDEX ledger_request_id ON ledger (request_id, attempt);
