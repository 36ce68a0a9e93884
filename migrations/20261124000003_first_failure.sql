-- When a change first failed, kept across its retries, so a dead letter tells both the first
-- and the last failure.
ALTER TABLE changes ADD COLUMN first_failed_at INTEGER;
