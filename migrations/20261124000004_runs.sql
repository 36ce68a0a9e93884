-- Scheduled runs: who runs it (the lease owner of the changes it claims) and when it last said
-- it was alive, so a run whose process died is recognised, marked interrupted, and its claimed
-- changes handed to the next run at once instead of after their leases expire.
ALTER TABLE sync_runs ADD COLUMN owner TEXT;
ALTER TABLE sync_runs ADD COLUMN heartbeat_at INTEGER;
ALTER TABLE sync_runs ADD COLUMN trigger TEXT;
ALTER TABLE sync_runs ADD COLUMN error TEXT;
