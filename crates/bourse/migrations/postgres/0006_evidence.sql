-- Quality evidence per route. Same meaning as migrations/sqlite/0007_evidence.sql.
CREATE TABLE route_evidence (
    route      text NOT NULL,
    model      text NOT NULL,
    source     text NOT NULL,
    score      double precision NOT NULL CHECK (score >= 0 AND score <= 1),
    n          bigint NOT NULL CHECK (n >= 0),
    updated_ms bigint NOT NULL,
    PRIMARY KEY (route, model, source)
);

ALTER TABLE ledger ADD COLUMN checks text;
CREATE INDEX ledger_checked_ts ON ledger (ts_ms) WHERE checks IS NOT NULL OR attempt = 0;
