-- The drift report: top-level fields the dictionary does not know, counted per source topic by
-- routers whose pigeons hold letters to the dictionary.
CREATE TABLE dictionary_drift (
    topic       TEXT    NOT NULL,
    field       TEXT    NOT NULL,
    seen        INTEGER NOT NULL,
    first_seen  INTEGER NOT NULL,
    last_seen   INTEGER NOT NULL,
    PRIMARY KEY (topic, field)
);
