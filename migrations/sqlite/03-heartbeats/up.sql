-- wecom-notify schema, version 3: how far each daemon has fired.

-- One row per daemon process, rewritten every few seconds while it runs and kept after it ends
-- (the next start reads it, then removes the rows of processes that are gone). Every slot
-- before `fired_through` has its row in `sends` (or a line in an unrecorded-sends file), so
-- after a crash the next start looks for slots without a row from there on: those are missed.
CREATE TABLE heartbeats (
    pid            INTEGER PRIMARY KEY,
    started_at     TEXT    NOT NULL,
    alive_at       TEXT    NOT NULL,
    fired_through  TEXT    NOT NULL,
    stopped_at     TEXT                -- set by a clean stop; NULL while running or after a crash
);
