-- Issue 19: what `bourse replay` re-plans from, the response cache's hits and the energy
-- estimate (see crates/bourse/src/ledger.rs, `LedgerEntry`). Same meaning as
-- migrations/postgres/0007_market.sql.
-- What the request needed of a model: tools 1, json_schema 2, vision 4 (rows from before: 0).
ALTER TABLE ledger ADD COLUMN needs INTEGER NOT NULL DEFAULT 0;
-- Answered from the response cache (cost 0), and what the cached answer cost when made.
ALTER TABLE ledger ADD COLUMN cache_hit INTEGER NOT NULL DEFAULT 0 CHECK (cache_hit IN (0, 1));
ALTER TABLE ledger ADD COLUMN cache_saved_nanos INTEGER NOT NULL DEFAULT 0;
-- Estimated energy (micro-watt-hours) and emissions (micrograms CO2e); NULL: no estimate.
ALTER TABLE ledger ADD COLUMN energy_uwh INTEGER;
ALTER TABLE ledger ADD COLUMN co2e_ug INTEGER;
