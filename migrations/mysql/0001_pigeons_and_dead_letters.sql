-- Pigeons (routes) with their version history, and dead letters.
-- MySQL, MariaDB and TiDB: only SQL all three accept.
CREATE TABLE pigeons (
    id          VARCHAR(128) NOT NULL PRIMARY KEY,
    version     BIGINT       NOT NULL,
    enabled     TINYINT      NOT NULL,
    spec        LONGTEXT     NOT NULL,
    updated_at  BIGINT       NOT NULL
) DEFAULT CHARSET = utf8mb4;

CREATE TABLE pigeon_versions (
    pigeon_id   VARCHAR(128) NOT NULL,
    version     BIGINT       NOT NULL,
    spec        LONGTEXT     NOT NULL,
    created_at  BIGINT       NOT NULL,
    PRIMARY KEY (pigeon_id, version)
) DEFAULT CHARSET = utf8mb4;

CREATE TABLE dead_letters (
    id                BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    letter_id         VARCHAR(64)  NOT NULL,
    pigeon_id         VARCHAR(128) NULL,
    pigeon_version    BIGINT       NULL,
    source_topic      VARCHAR(255) NOT NULL,
    source_partition  INT          NOT NULL,
    source_offset     BIGINT       NOT NULL,
    dest_topic        VARCHAR(255) NULL,
    dest_tag          VARCHAR(255) NULL,
    msg_key           LONGBLOB     NULL,
    headers           LONGTEXT     NOT NULL,
    payload           LONGBLOB     NULL,
    error_kind        VARCHAR(32)  NOT NULL,
    error_message     TEXT         NOT NULL,
    attempts          INT          NOT NULL,
    status            VARCHAR(16)  NOT NULL,
    next_attempt_at   BIGINT       NULL,
    created_at        BIGINT       NOT NULL,
    updated_at        BIGINT       NOT NULL,
    KEY dead_letters_due (status, next_attempt_at),
    KEY dead_letters_pigeon (pigeon_id, created_at),
    KEY dead_letters_letter (letter_id)
) DEFAULT CHARSET = utf8mb4;
