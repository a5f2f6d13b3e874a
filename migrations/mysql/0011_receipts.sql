-- What modules' handlers did with letters (pigeon.receipts): a sample of receipts, each one
-- handler's finish of one letter, found by letter id for a letter's trace ...
CREATE TABLE receipts (
    id           BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    letter_id    VARCHAR(200) NOT NULL,
    module       VARCHAR(200) NOT NULL,
    instance     VARCHAR(200) NOT NULL,
    capability   VARCHAR(200) NOT NULL,
    outcome      VARCHAR(16)  NOT NULL,
    duration_us  BIGINT       NOT NULL,
    attempts     INT          NOT NULL,
    at_ms        BIGINT       NOT NULL,
    pigeon_id    VARCHAR(200) NULL,
    error        TEXT         NULL,
    KEY receipts_by_letter (letter_id),
    KEY receipts_by_time (at_ms)
) DEFAULT CHARSET = utf8mb4;

-- ... and every receipt counted in one-minute buckets per module, capability and outcome (the
-- keeper adds its counts to the bucket, so several keepers sum).
CREATE TABLE receipt_totals (
    bucket           BIGINT       NOT NULL,
    module           VARCHAR(200) NOT NULL,
    capability       VARCHAR(200) NOT NULL,
    outcome          VARCHAR(16)  NOT NULL,
    receipts         BIGINT       NOT NULL,
    duration_us_sum  BIGINT       NOT NULL,
    duration_us_max  BIGINT       NOT NULL,
    PRIMARY KEY (bucket, module, capability, outcome)
) DEFAULT CHARSET = utf8mb4;
