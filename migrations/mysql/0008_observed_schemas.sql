-- Observed source schemas: which top-level fields, of which JSON types, the letters of each
-- source topic and tag carry, from the letters routers sample.
CREATE TABLE observed_tags (
    topic      VARCHAR(249) NOT NULL,
    tag        VARCHAR(191) NOT NULL,
    sampled    BIGINT       NOT NULL,
    last_seen  BIGINT       NOT NULL,
    PRIMARY KEY (topic, tag)
) DEFAULT CHARSET = utf8mb4;

CREATE TABLE observed_fields (
    topic      VARCHAR(249) NOT NULL,
    tag        VARCHAR(191) NOT NULL,
    field      VARCHAR(191) NOT NULL,
    kind       VARCHAR(16)  NOT NULL,
    seen       BIGINT       NOT NULL,
    PRIMARY KEY (topic, tag, field, kind)
) DEFAULT CHARSET = utf8mb4;
