-- The time index served no query: the reports' `(? IS NULL OR ts_ms >= ?)` filter plans as a
-- scan of the table whatever indexes exist, and lookups go by request id. It cost every
-- ledger row a second index insert (~1.9k instructions and ~50 bytes written per row).
-- Time-range reports read the whole table, as they did with it.
DROP INDEX IF EXISTS ledger_ts_ms;
