-- Issue 19: the energy estimate in the aggregate tables, so reports sum it like cost (see
-- crates/bourse/src/ledger/aggregate.rs, `UsageSums`, and crates/bourse/src/meter/energy.rs).
-- Same meaning as migrations/sqlite/0010_energy.sql.
-- energy_uwh: estimated micro-watt-hours; co2e_ug: estimated micrograms CO2e. Rows written
-- before the gateway filled ledger.energy_uwh / co2e_ug (NULL there) add 0, so the sums
-- already in these tables are right as they are: no back-fill.
ALTER TABLE models_minute ADD COLUMN energy_uwh bigint NOT NULL DEFAULT 0;
ALTER TABLE models_minute ADD COLUMN co2e_ug bigint NOT NULL DEFAULT 0;
ALTER TABLE models_hour ADD COLUMN energy_uwh bigint NOT NULL DEFAULT 0;
ALTER TABLE models_hour ADD COLUMN co2e_ug bigint NOT NULL DEFAULT 0;
ALTER TABLE models_day ADD COLUMN energy_uwh bigint NOT NULL DEFAULT 0;
ALTER TABLE models_day ADD COLUMN co2e_ug bigint NOT NULL DEFAULT 0;
ALTER TABLE routes_minute ADD COLUMN energy_uwh bigint NOT NULL DEFAULT 0;
ALTER TABLE routes_minute ADD COLUMN co2e_ug bigint NOT NULL DEFAULT 0;
ALTER TABLE routes_hour ADD COLUMN energy_uwh bigint NOT NULL DEFAULT 0;
ALTER TABLE routes_hour ADD COLUMN co2e_ug bigint NOT NULL DEFAULT 0;
ALTER TABLE routes_day ADD COLUMN energy_uwh bigint NOT NULL DEFAULT 0;
ALTER TABLE routes_day ADD COLUMN co2e_ug bigint NOT NULL DEFAULT 0;
ALTER TABLE keys_minute ADD COLUMN energy_uwh bigint NOT NULL DEFAULT 0;
ALTER TABLE keys_minute ADD COLUMN co2e_ug bigint NOT NULL DEFAULT 0;
ALTER TABLE keys_hour ADD COLUMN energy_uwh bigint NOT NULL DEFAULT 0;
ALTER TABLE keys_hour ADD COLUMN co2e_ug bigint NOT NULL DEFAULT 0;
ALTER TABLE keys_day ADD COLUMN energy_uwh bigint NOT NULL DEFAULT 0;
ALTER TABLE keys_day ADD COLUMN co2e_ug bigint NOT NULL DEFAULT 0;
ALTER TABLE usage_minute ADD COLUMN energy_uwh bigint NOT NULL DEFAULT 0;
ALTER TABLE usage_minute ADD COLUMN co2e_ug bigint NOT NULL DEFAULT 0;
ALTER TABLE usage_hour ADD COLUMN energy_uwh bigint NOT NULL DEFAULT 0;
ALTER TABLE usage_hour ADD COLUMN co2e_ug bigint NOT NULL DEFAULT 0;
ALTER TABLE usage_day ADD COLUMN energy_uwh bigint NOT NULL DEFAULT 0;
ALTER TABLE usage_day ADD COLUMN co2e_ug bigint NOT NULL DEFAULT 0;
