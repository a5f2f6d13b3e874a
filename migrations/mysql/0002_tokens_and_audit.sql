-- API tokens (stored hashed) and the audit log of every mutation.
CREATE TABLE tokens (
    name        VARCHAR(128) NOT NULL PRIMARY KEY,
    role        VARCHAR(16)  NOT NULL,
    hash        CHAR(64)     NOT NULL,
    created_at  BIGINT       NOT NULL,
    created_by  VARCHAR(128) NOT NULL,
    revoked_at  BIGINT       NULL,
    UNIQUE KEY tokens_hash (hash)
) DEFAULT CHARSET = utf8mb4;

CREATE TABLE audit (
    id           BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    at           BIGINT       NOT NULL,
    actor        VARCHAR(128) NOT NULL,
    action       VARCHAR(64)  NOT NULL,
    target       VARCHAR(255) NOT NULL,
    before_json  LONGTEXT     NULL,
    after_json   LONGTEXT     NULL,
    KEY audit_target (target, id)
) DEFAULT CHARSET = utf8mb4;
