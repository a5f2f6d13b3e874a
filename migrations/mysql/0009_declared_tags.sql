-- Declared source schemas from modules: the tags each module flies, with the dictionary fields
-- their letters carry, as its latest registration says.
CREATE TABLE declared_tags (
    module      VARCHAR(128) NOT NULL,
    tag         VARCHAR(191) NOT NULL,
    fields      TEXT         NOT NULL,
    updated_at  BIGINT       NOT NULL,
    PRIMARY KEY (module, tag)
) DEFAULT CHARSET = utf8mb4;
