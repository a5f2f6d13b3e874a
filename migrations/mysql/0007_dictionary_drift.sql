-- The drift report: top-level fields the dictionary does not know, counted per source topic by
-- routers whose pigeons hold letters to the dictionary.
CREATE TABLE dictionary_drift (
    topic       VARCHAR(249) NOT NULL,
    field       VARCHAR(255) NOT NULL,
    seen        BIGINT       NOT NULL,
    first_seen  BIGINT       NOT NULL,
    last_seen   BIGINT       NOT NULL,
    PRIMARY KEY (topic, field)
) DEFAULT CHARSET = utf8mb4;
