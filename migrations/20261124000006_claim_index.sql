-- The claim: a connector's unsettled changes by status, then object, oldest first. A claim
-- seeks straight to the first due changes of each object instead of visiting every pending row
-- (ordering them all by id and holding the write lock while it did, which under a backlog of
-- 100,000 rows cost ~100 ms per claim and stalled ingest behind it); the objects present are
-- found by one seek each.
CREATE INDEX idx_changes_connector_status_object_id ON changes (connector, status, object, id);
