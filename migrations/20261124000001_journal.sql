-- The change journal and the tables around it. Times are Unix epoch milliseconds (UTC) so that
-- ordering and arithmetic are plain integer comparisons; vendor timestamps are normalised on ingest.

-- Every observed change to a record. A row is acknowledged (webhook 2xx, poll watermark advanced)
-- only once it is committed here; the dispatcher claims rows by lease and settles them.
CREATE TABLE changes (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    connector          TEXT    NOT NULL,
    object             TEXT    NOT NULL,
    record_id          TEXT    NOT NULL,
    op                 TEXT    NOT NULL CHECK (op IN ('upsert', 'delete')),
    snapshot           TEXT    NOT NULL,                     -- JSON object of the fields observed
    source_modified_at INTEGER,                              -- the source's own modified time
    origin             TEXT    NOT NULL CHECK (origin IN ('webhook', 'poll', 'reconcile', 'backfill', 'replay')),
    received_at        INTEGER NOT NULL,
    dedupe_key         TEXT    NOT NULL,
    status             TEXT    NOT NULL DEFAULT 'pending'
                               CHECK (status IN ('pending', 'in_flight', 'done', 'dead')),
    outcome            TEXT,                                 -- written, echo, stale, conflict, ... once done
    attempts           INTEGER NOT NULL DEFAULT 0,
    next_attempt_at    INTEGER NOT NULL,
    lease_owner        TEXT,
    lease_expires_at   INTEGER,
    last_error         TEXT,
    updated_at         INTEGER NOT NULL
);

-- Duplicate deliveries of one event (webhook retries, overlapping poll windows) collapse here.
CREATE UNIQUE INDEX idx_changes_dedupe_key ON changes (dedupe_key);
-- The claim query: what is due, oldest first.
CREATE INDEX idx_changes_status_next_attempt_at ON changes (status, next_attempt_at);
-- Per-record ordering: "is there an earlier unsettled change to this record?"
CREATE INDEX idx_changes_connector_object_record_id_id ON changes (connector, object, record_id, id);

-- The pairing of one left record with one right record inside a flow.
CREATE TABLE links (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    flow               TEXT    NOT NULL,
    left_id            TEXT    NOT NULL,
    right_id           TEXT    NOT NULL,
    left_hash          TEXT,                                 -- hash of the mapped values last synced
    right_hash         TEXT,
    left_modified_at   INTEGER,                              -- source modified time last synced
    right_modified_at  INTEGER,
    created_at         INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL
);
CREATE UNIQUE INDEX idx_links_flow_left_id ON links (flow, left_id);
CREATE UNIQUE INDEX idx_links_flow_right_id ON links (flow, right_id);

-- How far each poller has read. Advanced in the same transaction that stores what it read.
CREATE TABLE watermarks (
    connector          TEXT    NOT NULL,
    object             TEXT    NOT NULL,
    scope              TEXT    NOT NULL,                     -- the flow (or '' for a connector-wide poll)
    position           INTEGER NOT NULL,                     -- source modified time reached (ms)
    last_record_id     TEXT    NOT NULL DEFAULT '',          -- tie-break among equal times
    updated_at         INTEGER NOT NULL,
    PRIMARY KEY (connector, object, scope)
);

-- Permanent failures and exhausted retries, with everything an operator needs to act.
CREATE TABLE dead_letters (
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
                               CHECK (status IN ('open', 'replayed', 'discarded')),
    resolved_at        INTEGER
);
CREATE INDEX idx_dead_letters_status_id ON dead_letters (status, id);
CREATE INDEX idx_dead_letters_change_id ON dead_letters (change_id);

-- One row per scheduled run of a flow.
CREATE TABLE sync_runs (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    flow               TEXT    NOT NULL,
    started_at         INTEGER NOT NULL,
    ended_at           INTEGER,
    status             TEXT    NOT NULL DEFAULT 'running'
                               CHECK (status IN ('running', 'succeeded', 'failed', 'interrupted')),
    seen               INTEGER NOT NULL DEFAULT 0,
    written            INTEGER NOT NULL DEFAULT 0,
    skipped            INTEGER NOT NULL DEFAULT 0,
    failed             INTEGER NOT NULL DEFAULT 0,
    api_calls          INTEGER NOT NULL DEFAULT 0,
    checkpoint         TEXT
);
CREATE INDEX idx_sync_runs_flow_id ON sync_runs (flow, id);
-- Two runs of one flow never overlap.
CREATE UNIQUE INDEX idx_sync_runs_flow_running ON sync_runs (flow) WHERE status = 'running';

-- API calls spent per connector per UTC day, so the daily budget survives restarts.
CREATE TABLE api_usage (
    connector          TEXT    NOT NULL,
    day                TEXT    NOT NULL,                     -- yyyy-mm-dd, UTC
    calls              INTEGER NOT NULL DEFAULT 0,
    server_used        INTEGER,                              -- the vendor's own count, when it tells
    server_max         INTEGER,
    updated_at         INTEGER NOT NULL,
    PRIMARY KEY (connector, day)
);
