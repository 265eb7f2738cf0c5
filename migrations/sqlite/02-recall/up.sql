-- wecom-notify schema, version 2: recall, and indexes for `history`.

-- When `wecom-notify recall` had WeCom withdraw the message (UTC, RFC 3339, whole seconds, Z);
-- NULL when it never was.
ALTER TABLE sends ADD COLUMN recalled_at TEXT;

-- `history --status S`: the newest rows of one status without a sort.
CREATE INDEX sends_by_status ON sends (status, id);
-- `history --since WHEN` and the failures of the last 24 h in `history --summary`: a range of
-- slots, however long the history.
CREATE INDEX sends_by_slot ON sends (scheduled_at);
