-- Tenants, their virtual keys and the audit trail of every change to them. Same meaning as
-- migrations/sqlite/0004_tenancy.sql.
CREATE TABLE tenants (
    name       text PRIMARY KEY,
    spec       text NOT NULL,
    created_ms bigint NOT NULL,
    updated_ms bigint NOT NULL
);
CREATE TABLE api_keys (
    id            text PRIMARY KEY,
    tenant        text NOT NULL REFERENCES tenants (name),
    name          text,
    secret_sha256 text NOT NULL UNIQUE,
    spec          text NOT NULL,
    created_ms    bigint NOT NULL,
    expires_ms    bigint,
    revoked_ms    bigint
);
CREATE TABLE audit (
    id     bigserial PRIMARY KEY,
    ts_ms  bigint NOT NULL,
    actor  text NOT NULL,
    action text NOT NULL,
    target text NOT NULL,
    detail text NOT NULL
);
CREATE TABLE directory_version (
    id      integer PRIMARY KEY CHECK (id = 1),
    version bigint NOT NULL
);
INSERT INTO directory_version (id, version) VALUES (1, 0);
ALTER TABLE ledger ADD COLUMN tenant_id text;
