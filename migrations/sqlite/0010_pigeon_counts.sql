-- What each pigeon did, in one-minute buckets: every instance adds its counts to the bucket
-- (letters taken, outputs delivered, failures), so the admin overview sums the cluster's work.
CREATE TABLE pigeon_counts (
    bucket       INTEGER NOT NULL,
    pigeon_id    TEXT    NOT NULL,
    letters_in   INTEGER NOT NULL,
    letters_out  INTEGER NOT NULL,
    failures     INTEGER NOT NULL,
    PRIMARY KEY (bucket, pigeon_id)
);
