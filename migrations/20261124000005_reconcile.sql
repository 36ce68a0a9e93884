-- Reconcile reports: what a comparison of both sides of a flow with its links found. The newest
-- per flow is served at GET /api/v1/flows/{name}/reconcile.
CREATE TABLE reconcile_reports (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    flow               TEXT    NOT NULL,
    started_at         INTEGER NOT NULL,
    report             TEXT    NOT NULL
);
CREATE INDEX idx_reconcile_reports_flow_id ON reconcile_reports (flow, id);
