-- How an estimated row was counted: 'tokenizer' (the o200k BPE) or 'heuristic' (the
-- byte-count rule, when the tokenizer's pool was saturated). NULL when the upstream reported
-- the usage; rows estimated before this column existed were counted with the tokenizer.
-- Same meaning as migrations/sqlite/0003_estimator.sql.
ALTER TABLE ledger ADD COLUMN estimator text CHECK (estimator IN ('tokenizer', 'heuristic'));
