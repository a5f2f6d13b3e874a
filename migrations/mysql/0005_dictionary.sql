-- The global dictionary: the field names every module agrees on, each with its type, a
-- description and the aliases found in the wild. Seeded with the live-stream vocabulary; the
-- SDK's typed fields (pigeon_sdk::fields) are the same names.
CREATE TABLE dictionary (
    name         VARCHAR(64)  NOT NULL PRIMARY KEY,
    kind         VARCHAR(16)  NOT NULL,
    description  VARCHAR(500) NOT NULL,
    aliases      TEXT         NOT NULL,
    version      BIGINT       NOT NULL,
    updated_at   BIGINT       NOT NULL
) DEFAULT CHARSET = utf8mb4;

INSERT INTO dictionary (name, kind, description, aliases, version, updated_at) VALUES
    ('userId', 'integer', 'The user (viewer) who acted', '["uid","user_id"]', 1, 0),
    ('anchorId', 'integer', 'The anchor (streamer) of the room', '["aid","anchor_id"]', 1, 0),
    ('roomId', 'string', 'The live room', '["rid","room_id"]', 1, 0),
    ('liveId', 'string', 'One broadcast of a room', '["live_id"]', 1, 0),
    ('giftId', 'integer', 'The gift', '["gid","gift_id"]', 1, 0),
    ('giftCount', 'integer', 'How many gifts were sent at once', '["gift_count","num"]', 1, 0),
    ('amount', 'number', 'A money or coin amount', '["amt","money"]', 1, 0),
    ('score', 'integer', 'Points on a leaderboard or progress bar', '["points"]', 1, 0),
    ('activityId', 'string', 'The activity', '["actId","activity_id"]', 1, 0),
    ('taskId', 'string', 'A task of an activity', '["task_id"]', 1, 0),
    ('level', 'integer', 'A level reached', '["lv","lvl"]', 1, 0),
    ('timestamp', 'integer', 'When the business event happened (unix ms)', '["ts"]', 1, 0);
