-- wecom-notify schema: the claim `recall` takes before it calls WeCom, so that of several
-- `recall ID` run at once exactly one makes the call.

-- While a recall of the row is calling WeCom: when it started (UTC, RFC 3339, whole seconds,
-- Z); NULL otherwise. A claim older than a few minutes was left by a process that died.
ALTER TABLE sends ADD COLUMN recall_started_at TEXT;
