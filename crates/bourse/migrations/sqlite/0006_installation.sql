-- What is made once per installation (a store, and every replica that shares it). One row,
-- written by the first gateway that opens the store (the code makes the secret, from the OS's
-- random number generator). `key_id_secret`: 64 hex digits keying the HMAC that gives config
-- keys (server.api_keys, server.admin_keys) their ids in ledger and audit rows.
CREATE TABLE installation (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    key_id_secret TEXT NOT NULL
);
