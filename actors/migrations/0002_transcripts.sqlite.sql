-- Final transcript segments of live captions (SQLite). Times: Unix ms, except start_ms and
-- end_ms, which count from the meeting's start.
CREATE TABLE transcripts (
    seq                INTEGER PRIMARY KEY AUTOINCREMENT,
    segment_id         TEXT    NOT NULL UNIQUE,
    node               TEXT    NOT NULL,
    api_key            TEXT    NOT NULL,
    meeting            TEXT    NOT NULL,
    meeting_started_ms INTEGER NOT NULL,
    participant        TEXT    NOT NULL,
    identity           TEXT    NOT NULL,
    name               TEXT    NOT NULL,
    track              TEXT    NOT NULL,
    language           TEXT    NOT NULL,
    start_ms           INTEGER NOT NULL,
    end_ms             INTEGER NOT NULL,
    text               TEXT    NOT NULL,
    created_ms         INTEGER NOT NULL
);
CREATE INDEX transcripts_meeting ON transcripts (meeting, meeting_started_ms, start_ms);
