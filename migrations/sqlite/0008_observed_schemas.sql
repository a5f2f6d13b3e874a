-- Observed source schemas: which top-level fields, of which JSON types, the letters of each
-- source topic and tag carry, from the letters routers sample.
CREATE TABLE observed_tags (
    topic      TEXT    NOT NULL,
    tag        TEXT    NOT NULL,
    sampled    INTEGER NOT NULL,
    last_seen  INTEGER NOT NULL,
    PRIMARY KEY (topic, tag)
);

CREATE TABLE observed_fields (
    topic      TEXT    NOT NULL,
    tag        TEXT    NOT NULL,
    field      TEXT    NOT NULL,
    kind       TEXT    NOT NULL,
    seen       INTEGER NOT NULL,
    PRIMARY KEY (topic, tag, field, kind)
);
