-- What is made once per installation. Same meaning as migrations/sqlite/0006_installation.sql.
CREATE TABLE installation (
    id            integer PRIMARY KEY CHECK (id = 1),
    key_id_secret text NOT NULL
);
