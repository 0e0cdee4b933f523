-- Quality evidence per route (task): per model and source, a score in [0, 1] over n samples
-- (see crates/bourse/src/ledger/evidence.rs). `model` is `provider/model`. Sources: an import
-- (`bourse evals import`, the CSV's `source`), an offline eval (`evals:DATASET`), a live
-- check (`check:KIND`). Same meaning as migrations/postgres/0006_evidence.sql.
CREATE TABLE route_evidence (
    route      TEXT NOT NULL,
    model      TEXT NOT NULL,
    source     TEXT NOT NULL,
    score      REAL NOT NULL CHECK (score >= 0 AND score <= 1),
    n          INTEGER NOT NULL CHECK (n >= 0),
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (route, model, source)
);

-- The answer checks an attempt ran and their outcomes (`complete:pass,json_schema:fail`),
-- NULL when none ran. The cascade report reads the checked rows of a window, and the side
-- calls (a judge, a shadow: attempt 0), through a partial index that holds only those, so it
-- costs the other rows nothing.
ALTER TABLE ledger ADD COLUMN checks TEXT;
CREATE INDEX ledger_checked_ts ON ledger (ts_ms) WHERE checks IS NOT NULL OR attempt = 0;
