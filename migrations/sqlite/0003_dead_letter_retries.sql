-- Retrying dead letters: a claim (token and lease) per row, and the history of every attempt.
ALTER TABLE dead_letters ADD COLUMN claim_token TEXT;
ALTER TABLE dead_letters ADD COLUMN claimed_until INTEGER;

CREATE INDEX dead_letters_claim ON dead_letters (claim_token);

CREATE TABLE dead_letter_attempts (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    dead_letter_id  INTEGER NOT NULL,
    attempt         INTEGER NOT NULL,
    at              INTEGER NOT NULL,
    actor           TEXT    NOT NULL,
    outcome         TEXT    NOT NULL,
    message         TEXT    NOT NULL
);

CREATE INDEX dead_letter_attempts_letter ON dead_letter_attempts (dead_letter_id, id);
