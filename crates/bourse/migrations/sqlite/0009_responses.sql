-- Stored Responses API answers, for `previous_response_id` (see
-- crates/bourse/src/ledger/responses.rs). The one place Bourse keeps prompt and answer text,
-- because the client asked it to (`store`, true by default as with OpenAI; `store: false`
-- keeps nothing). A row is read only by the key that made it (`key_id`, '' when the gateway
-- has no keys) and only until `expires_ms`; expired rows are deleted as new ones are written.
-- `input` is the JSON array of every input item of the conversation so far (the previous
-- response's too), `response` the Response object. Same meaning as
-- migrations/postgres/0008_responses.sql.
CREATE TABLE responses (
    id         TEXT PRIMARY KEY,
    key_id     TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    input      TEXT NOT NULL,
    response   TEXT NOT NULL
);
CREATE INDEX responses_expires ON responses (expires_ms);
