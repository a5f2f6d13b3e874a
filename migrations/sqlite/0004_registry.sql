-- The registry: module instances as they register and heartbeat, and the capabilities modules
-- declare. Capabilities a module stops declaring are retired, never deleted.
CREATE TABLE module_instances (
    module        TEXT    NOT NULL,
    instance      TEXT    NOT NULL,
    host          TEXT    NOT NULL,
    version       TEXT    NOT NULL,
    topic         TEXT    NOT NULL,
    lanes         TEXT    NOT NULL,
    capabilities  TEXT    NOT NULL,
    heartbeat_ms  INTEGER NOT NULL,
    started_at    INTEGER NOT NULL,
    last_seen     INTEGER NOT NULL,
    left_at       INTEGER,
    PRIMARY KEY (module, instance)
);

CREATE TABLE capabilities (
    module       TEXT    NOT NULL,
    name         TEXT    NOT NULL,
    description  TEXT    NOT NULL,
    requires     TEXT    NOT NULL,
    first_seen   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    retired_at   INTEGER,
    PRIMARY KEY (module, name)
);
