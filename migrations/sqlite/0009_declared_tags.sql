-- Declared source schemas from modules: the tags each module flies, with the dictionary fields
-- their letters carry, as its latest registration says.
CREATE TABLE declared_tags (
    module      TEXT    NOT NULL,
    tag         TEXT    NOT NULL,
    fields      TEXT    NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (module, tag)
);
