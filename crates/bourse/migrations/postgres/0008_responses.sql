-- Stored Responses API answers, for `previous_response_id`. Same meaning as
-- migrations/sqlite/0009_responses.sql.
CREATE TABLE responses (
    id         text PRIMARY KEY,
    key_id     text NOT NULL,
    created_ms bigint NOT NULL,
    expires_ms bigint NOT NULL,
    input      text NOT NULL,
    response   text NOT NULL
);
CREATE INDEX responses_expires ON responses (expires_ms);
