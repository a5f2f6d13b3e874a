-- Retrying dead letters: a claim (token and lease) per row, and the history of every attempt.
-- One column per ALTER: older TiDB releases take a single schema change per statement.
ALTER TABLE dead_letters ADD COLUMN claim_token VARCHAR(64) NULL;
ALTER TABLE dead_letters ADD COLUMN claimed_until BIGINT NULL;

CREATE INDEX dead_letters_claim ON dead_letters (claim_token);

CREATE TABLE dead_letter_attempts (
    id              BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    dead_letter_id  BIGINT       NOT NULL,
    attempt         INT          NOT NULL,
    at              BIGINT       NOT NULL,
    actor           VARCHAR(128) NOT NULL,
    outcome         VARCHAR(16)  NOT NULL,
    message         TEXT         NOT NULL,
    KEY dead_letter_attempts_letter (dead_letter_id, id)
) DEFAULT CHARSET = utf8mb4;
