-- How an estimated row was counted: 'tokenizer' (the o200k BPE) or 'heuristic' (the
-- byte-count rule, when the tokenizer's pool was saturated). NULL when the upstream reported
-- the usage; rows estimated before this column existed were counted with the tokenizer.
ALTER TABLE ledger ADD COLUMN estimator TEXT CHECK (estimator IN ('tokenizer', 'heuristic'));
