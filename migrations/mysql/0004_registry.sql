-- The registry: module instances as they register and heartbeat, and the capabilities modules
-- declare. Capabilities a module stops declaring are retired, never deleted.
CREATE TABLE module_instances (
    module        VARCHAR(64)  NOT NULL,
    instance      VARCHAR(128) NOT NULL,
    host          VARCHAR(255) NOT NULL,
    version       VARCHAR(64)  NOT NULL,
    topic         VARCHAR(255) NOT NULL,
    lanes         TEXT         NOT NULL,
    capabilities  TEXT         NOT NULL,
    heartbeat_ms  BIGINT       NOT NULL,
    started_at    BIGINT       NOT NULL,
    last_seen     BIGINT       NOT NULL,
    left_at       BIGINT       NULL,
    PRIMARY KEY (module, instance)
) DEFAULT CHARSET = utf8mb4;

CREATE TABLE capabilities (
    module       VARCHAR(64)  NOT NULL,
    name         VARCHAR(128) NOT NULL,
    description  TEXT         NOT NULL,
    requires     TEXT         NOT NULL,
    first_seen   BIGINT       NOT NULL,
    updated_at   BIGINT       NOT NULL,
    retired_at   BIGINT       NULL,
    PRIMARY KEY (module, name)
) DEFAULT CHARSET = utf8mb4;
