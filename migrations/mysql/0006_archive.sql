-- The archive: letters kept whole for search and replay, and the replay jobs that read it.
-- MySQL, MariaDB and TiDB. TiDB-only clauses sit in /*T! … */ comments, which TiDB executes
-- and the others skip: the letter id is a NONCLUSTERED key and rows get sharded row ids, so
-- time-ordered inserts spread over regions instead of piling onto one.
CREATE TABLE archived_letters (
    letter_id        VARCHAR(64)  NOT NULL,
    pigeon_id        VARCHAR(128) NOT NULL,
    topic            VARCHAR(249) NOT NULL,
    kafka_partition  INT          NOT NULL,
    kafka_offset     BIGINT       NOT NULL,
    letter_time      BIGINT       NOT NULL,
    tag              VARCHAR(255) NOT NULL,
    user_id          VARCHAR(128) NULL,
    anchor_id        VARCHAR(128) NULL,
    room_id          VARCHAR(128) NULL,
    msg_key          LONGBLOB     NULL,
    headers          LONGBLOB     NOT NULL,
    payload          LONGBLOB     NULL,
    archived_at      BIGINT       NOT NULL,
    PRIMARY KEY (letter_id) /*T![clustered_index] NONCLUSTERED */,
    KEY archived_by_time (letter_time, topic, kafka_partition, kafka_offset),
    KEY archived_by_topic (topic, letter_time),
    KEY archived_by_tag (tag, letter_time),
    KEY archived_by_pigeon (pigeon_id, letter_time),
    KEY archived_by_user (user_id, letter_time),
    KEY archived_by_anchor (anchor_id, letter_time),
    KEY archived_by_room (room_id, letter_time)
) DEFAULT CHARSET = utf8mb4 /*T! SHARD_ROW_ID_BITS = 4 PRE_SPLIT_REGIONS = 2 */;

CREATE TABLE replay_jobs (
    id                   BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    spec                 LONGTEXT     NOT NULL,
    status               VARCHAR(16)  NOT NULL,
    total                BIGINT       NOT NULL,
    sent                 BIGINT       NOT NULL,
    resent               BIGINT       NOT NULL,
    in_flight            BIGINT       NOT NULL,
    checkpoint_time      BIGINT       NULL,
    checkpoint_topic     VARCHAR(249) NULL,
    checkpoint_partition INT          NULL,
    checkpoint_offset    BIGINT       NULL,
    message              TEXT         NULL,
    owner                VARCHAR(128) NULL,
    lease_until          BIGINT       NULL,
    created_by           VARCHAR(128) NOT NULL,
    created_at           BIGINT       NOT NULL,
    updated_at           BIGINT       NOT NULL,
    KEY replay_jobs_status (status, lease_until)
) DEFAULT CHARSET = utf8mb4;
