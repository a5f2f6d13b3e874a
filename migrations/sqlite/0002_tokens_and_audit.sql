-- API tokens (stored hashed) and the audit log of every mutation.
CREATE TABLE tokens (
    name        TEXT    NOT NULL PRIMARY KEY,
    role        TEXT    NOT NULL,
    hash        TEXT    NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL,
    created_by  TEXT    NOT NULL,
    revoked_at  INTEGER
);

CREATE TABLE audit (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    at           INTEGER NOT NULL,
    actor        TEXT    NOT NULL,
    action       TEXT    NOT NULL,
    target       TEXT    NOT NULL,
    before_json  TEXT,
    after_json   TEXT
);

CREATE INDEX audit_target ON audit (target, id);
