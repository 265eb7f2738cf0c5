-- wecom-notify schema, version 1. Timestamps are UTC RFC 3339 with whole seconds and a Z
-- ("2026-11-30T01:30:00Z"), so they sort and compare as text.

-- One row per fire of a schedule (per slot), and per manual send.
CREATE TABLE sends (
    id              INTEGER PRIMARY KEY,
    schedule        TEXT    NOT NULL,
    trigger         TEXT    NOT NULL CHECK (trigger IN ('cron', 'manual', 'catch_up')),
    scheduled_at    TEXT    NOT NULL,  -- the slot the cron named (manual: when it was asked for)
    created_at      TEXT    NOT NULL,
    finished_at     TEXT,
    status          TEXT    NOT NULL CHECK (status IN
                        ('pending', 'sent', 'partial', 'failed', 'interrupted', 'dry_run',
                         'missed', 'skipped')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    app             TEXT    NOT NULL,
    agent_id        INTEGER NOT NULL,
    msgtype         TEXT    NOT NULL,
    payload         TEXT    NOT NULL,  -- the JSON body exactly as POSTed, without the token
    errcode         INTEGER,
    errmsg          TEXT,
    msgid           TEXT,
    invaliduser     TEXT,
    invalidparty    TEXT,
    invalidtag      TEXT,
    unlicenseduser  TEXT,
    pid             INTEGER             -- the process that claimed the row (crash recovery)
);

-- A slot is fired at most once, whatever races (a doubled tick, a reload, a second daemon).
-- Dry runs do not claim slots: a rehearsal must not stop the real daemon from sending.
CREATE UNIQUE INDEX sends_one_per_slot ON sends (schedule, scheduled_at)
    WHERE trigger IN ('cron', 'catch_up') AND status <> 'dry_run';

CREATE INDEX sends_by_schedule ON sends (schedule, id);
CREATE INDEX sends_pending ON sends (status) WHERE status = 'pending';

-- The cached access token of each WeCom application. Never the secret.
CREATE TABLE access_tokens (
    corp_id       TEXT    NOT NULL,
    agent_id      INTEGER NOT NULL,
    access_token  TEXT    NOT NULL,
    fetched_at    TEXT    NOT NULL,
    expires_at    TEXT    NOT NULL,
    PRIMARY KEY (corp_id, agent_id)
);

-- The daemon's own life, so an auditor can tell which config was in force when.
CREATE TABLE events (
    id             INTEGER PRIMARY KEY,
    at             TEXT    NOT NULL,
    kind           TEXT    NOT NULL,  -- started | reloaded | reload_failed | stopped | ...
    config_digest  TEXT,
    pid            INTEGER,
    version        TEXT,
    detail         TEXT
);
CREATE INDEX events_by_time ON events (at);
