-- Tenants, their virtual keys and the audit trail of every change to them (issue 15).
-- `spec` columns hold the JSON of what an administrator set (limits, policy, routes...), so a
-- new setting needs no migration; what the gateway looks up by (hash, tenant, times) has
-- columns of its own. `directory_version` is bumped by every change: replicas poll it to
-- know when to reload.
CREATE TABLE tenants (
    name       TEXT PRIMARY KEY,
    spec       TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE TABLE api_keys (
    id            TEXT PRIMARY KEY,
    tenant        TEXT NOT NULL REFERENCES tenants (name),
    name          TEXT,
    secret_sha256 TEXT NOT NULL UNIQUE,
    spec          TEXT NOT NULL,
    created_ms    INTEGER NOT NULL,
    expires_ms    INTEGER,
    revoked_ms    INTEGER
);
CREATE TABLE audit (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    ts_ms  INTEGER NOT NULL,
    actor  TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE TABLE directory_version (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
);
INSERT INTO directory_version (id, version) VALUES (1, 0);
-- Which tenant a row's key belonged to (NULL for config keys and unauthenticated gateways).
ALTER TABLE ledger ADD COLUMN tenant_id TEXT;
