-- wecom-notify schema: sends through group robots (群机器人).

-- The group robot a row was sent through, by its name in the config (never its webhook key);
-- NULL for a row sent as an application, which `app` and `agent_id` name. A robot row has
-- `app` '' and `agent_id` 0. Rows written before this migration are application rows.
ALTER TABLE sends ADD COLUMN robot TEXT;
