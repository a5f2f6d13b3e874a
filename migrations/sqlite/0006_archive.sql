-- The archive: letters kept whole for search and replay, and the replay jobs that read it.
CREATE TABLE archived_letters (
    letter_id        TEXT    NOT NULL PRIMARY KEY,
    pigeon_id        TEXT    NOT NULL,
    topic            TEXT    NOT NULL,
    kafka_partition  INTEGER NOT NULL,
    kafka_offset     INTEGER NOT NULL,
    letter_time      INTEGER NOT NULL,
    tag              TEXT    NOT NULL,
    user_id          TEXT,
    anchor_id        TEXT,
    room_id          TEXT,
    msg_key          BLOB,
    headers          BLOB    NOT NULL,
    payload          BLOB,
    archived_at      INTEGER NOT NULL
);
CREATE INDEX archived_by_time ON archived_letters (letter_time, topic, kafka_partition, kafka_offset);
CREATE INDEX archived_by_topic ON archived_letters (topic, letter_time);
CREATE INDEX archived_by_tag ON archived_letters (tag, letter_time);
CREATE INDEX archived_by_pigeon ON archived_letters (pigeon_id, letter_time);
CREATE INDEX archived_by_user ON archived_letters (user_id, letter_time);
CREATE INDEX archived_by_anchor ON archived_letters (anchor_id, letter_time);
CREATE INDEX archived_by_room ON archived_letters (room_id, letter_time);

CREATE TABLE replay_jobs (
    id                   INTEGER PRIMARY KEY AUTOINCREMENT,
    spec                 TEXT    NOT NULL,
    status               TEXT    NOT NULL,
    total                INTEGER NOT NULL,
    sent                 INTEGER NOT NULL,
    resent               INTEGER NOT NULL,
    in_flight            INTEGER NOT NULL,
    checkpoint_time      INTEGER,
    checkpoint_topic     TEXT,
    checkpoint_partition INTEGER,
    checkpoint_offset    INTEGER,
    message              TEXT,
    owner                TEXT,
    lease_until          INTEGER,
    created_by           TEXT    NOT NULL,
    created_at           INTEGER NOT NULL,
    updated_at           INTEGER NOT NULL
);
CREATE INDEX replay_jobs_status ON replay_jobs (status, lease_until);
