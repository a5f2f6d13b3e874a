-- What each pigeon did, in one-minute buckets: every instance adds its counts to the bucket
-- (letters taken, outputs delivered, failures), so the admin overview sums the cluster's work.
CREATE TABLE pigeon_counts (
    bucket       BIGINT       NOT NULL,
    pigeon_id    VARCHAR(191) NOT NULL,
    letters_in   BIGINT       NOT NULL,
    letters_out  BIGINT       NOT NULL,
    failures     BIGINT       NOT NULL,
    PRIMARY KEY (bucket, pigeon_id)
) DEFAULT CHARSET = utf8mb4;
