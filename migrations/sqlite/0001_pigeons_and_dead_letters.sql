-- Pigeons (routes) with their version history, and dead letters.
CREATE TABLE pigeons (
    id          TEXT    NOT NULL PRIMARY KEY,
    version     INTEGER NOT NULL,
    enabled     INTEGER NOT NULL,
    spec        TEXT    NOT NULL,
    updated_at  INTEGER NOT NULL
);

CREATE TABLE pigeon_versions (
    pigeon_id   TEXT    NOT NULL,
    version     INTEGER NOT NULL,
    spec        TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (pigeon_id, version)
);

CREATE TABLE dead_letters (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    letter_id         TEXT    NOT NULL,
    pigeon_id         TEXT,
    pigeon_version    INTEGER,
    source_topic      TEXT    NOT NULL,
    source_partition  INTEGER NOT NULL,
    source_offset     INTEGER NOT NULL,
    dest_topic        TEXT,
    dest_tag          TEXT,
    msg_key           BLOB,
    headers           TEXT    NOT NULL,
    payload           BLOB,
    error_kind        TEXT    NOT NULL,
    error_message     TEXT    NOT NULL,
    attempts          INTEGER NOT NULL,
    status            TEXT    NOT NULL,
    next_attempt_at   INTEGER,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL
);

CREATE INDEX dead_letters_due ON dead_letters (status, next_attempt_at);
CREATE INDEX dead_letters_pigeon ON dead_letters (pigeon_id, created_at);
CREATE INDEX dead_letters_letter ON dead_letters (letter_id);
