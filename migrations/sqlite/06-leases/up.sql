-- wecom-notify schema: claims with an owner and a lease, so that crash recovery needs no pid.

-- The daemon (its `instance:`, by default the host name) that claimed the row, and, while the
-- row is `pending`, until when its claim holds (UTC, RFC 3339, Z). The sending process renews
-- the lease while the send is in flight; once it lapsed, any daemon on the database resolves
-- the row as a crash row (resent inside the duplicate-check window, else `interrupted`), taking
-- the lease itself first so that two never resolve one row. NULL for rows written before this
-- migration: for those the pid decides, as before.
ALTER TABLE sends ADD COLUMN instance TEXT;
ALTER TABLE sends ADD COLUMN lease_until TEXT;
-- The instance whose life an event tells, and whose heartbeat a row is.
ALTER TABLE events ADD COLUMN instance TEXT;
ALTER TABLE heartbeats ADD COLUMN instance TEXT;
