-- What modules' handlers did with letters (pigeon.receipts): a sample of receipts, each one
-- handler's finish of one letter, found by letter id for a letter's trace ...
CREATE TABLE receipts (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    letter_id    TEXT    NOT NULL,
    module       TEXT    NOT NULL,
    instance     TEXT    NOT NULL,
    capability   TEXT    NOT NULL,
    outcome      TEXT    NOT NULL,
    duration_us  INTEGER NOT NULL,
    attempts     INTEGER NOT NULL,
    at_ms        INTEGER NOT NULL,
    pigeon_id    TEXT    NULL,
    error        TEXT    NULL
);
CREATE INDEX receipts_by_letter ON receipts (letter_id);
CREATE INDEX receipts_by_time ON receipts (at_ms);

-- ... and every receipt counted in one-minute buckets per module, capability and outcome (the
-- keeper adds its counts to the bucket, so several keepers sum).
CREATE TABLE receipt_totals (
    bucket           INTEGER NOT NULL,
    module           TEXT    NOT NULL,
    capability       TEXT    NOT NULL,
    outcome          TEXT    NOT NULL,
    receipts         INTEGER NOT NULL,
    duration_us_sum  INTEGER NOT NULL,
    duration_us_max  INTEGER NOT NULL,
    PRIMARY KEY (bucket, module, capability, outcome)
);
