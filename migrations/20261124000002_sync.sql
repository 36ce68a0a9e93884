-- The sync engine's state: what each link last synced, what each change did, and dead letters
-- that a later success supersedes.

-- Per field rule, the value last synced in each side's own form:
-- {"<rule index>": {"left": <value>, "right": <value>}}. Echo suppression compares a change's
-- values with its side's form; conflict detection with the other side's.
ALTER TABLE links ADD COLUMN synced TEXT NOT NULL DEFAULT '{}';

-- What the planner decided for a change, per flow (written, echo, stale, conflict with both values
-- and the winner, ...): the record history operators read.
ALTER TABLE changes ADD COLUMN detail TEXT;

-- Dead letters gain `superseded` (a later change to the same record synced) and remember the
-- change a replay created. SQLite cannot alter a CHECK constraint: the table is rebuilt.
CREATE TABLE dead_letters_new (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    change_id          INTEGER NOT NULL REFERENCES changes (id),
    flow               TEXT,
    connector          TEXT    NOT NULL,
    operation          TEXT    NOT NULL,
    payload            TEXT    NOT NULL,
    http_status        INTEGER,
    vendor_code        TEXT,
    vendor_message     TEXT,
    attempts           INTEGER NOT NULL,
    first_failed_at    INTEGER NOT NULL,
    last_failed_at     INTEGER NOT NULL,
    status             TEXT    NOT NULL DEFAULT 'open'
                               CHECK (status IN ('open', 'replayed', 'discarded', 'superseded')),
    resolved_at        INTEGER,
    replay_change_id   INTEGER REFERENCES changes (id)
);
INSERT INTO dead_letters_new (id, change_id, flow, connector, operation, payload, http_status,
                              vendor_code, vendor_message, attempts, first_failed_at,
                              last_failed_at, status, resolved_at)
     SELECT id, change_id, flow, connector, operation, payload, http_status, vendor_code,
            vendor_message, attempts, first_failed_at, last_failed_at, status, resolved_at
       FROM dead_letters;
DROP TABLE dead_letters;
ALTER TABLE dead_letters_new RENAME TO dead_letters;
CREATE INDEX idx_dead_letters_status_id ON dead_letters (status, id);
CREATE INDEX idx_dead_letters_change_id ON dead_letters (change_id);
-- Listing filters: by connector or flow, newest first.
CREATE INDEX idx_dead_letters_connector_id ON dead_letters (connector, id);
CREATE INDEX idx_dead_letters_flow_id ON dead_letters (flow, id);
