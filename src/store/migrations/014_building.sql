-- Deployments gain the `building` state (Upload and Git sources), between `queued`
-- and `pulling`. SQLite cannot change a CHECK in place, so both tables are rebuilt;
-- the logs go first, so dropping the deployments cascades into nothing.
CREATE TABLE deployments_keep AS SELECT * FROM deployments;
CREATE TABLE deployment_logs_keep AS SELECT * FROM deployment_logs;
DROP TABLE deployment_logs;
DROP TABLE deployments;

CREATE TABLE deployments (
    id           TEXT PRIMARY KEY,
    service_id   TEXT NOT NULL REFERENCES services(id) ON DELETE CASCADE,
    project_id   TEXT NOT NULL,
    source       TEXT NOT NULL,
    status       TEXT NOT NULL
        CHECK (status IN ('queued', 'building', 'pulling', 'starting', 'live', 'failed', 'cancelled', 'superseded')),
    image_digest TEXT,
    error        TEXT,
    rollback_of  TEXT,
    created_at   TEXT NOT NULL,
    started_at   TEXT,
    finished_at  TEXT
) STRICT;
CREATE INDEX deployments_service ON deployments(service_id, id);
-- One deployment of a service in flight at a time.
CREATE UNIQUE INDEX deployments_in_flight ON deployments(service_id)
    WHERE status IN ('queued', 'building', 'pulling', 'starting');

CREATE TABLE deployment_logs (
    deployment_id TEXT NOT NULL REFERENCES deployments(id) ON DELETE CASCADE,
    seq           INTEGER NOT NULL,
    at            TEXT NOT NULL,
    line          TEXT NOT NULL,
    PRIMARY KEY (deployment_id, seq)
) STRICT;

INSERT INTO deployments SELECT * FROM deployments_keep;
INSERT INTO deployment_logs SELECT * FROM deployment_logs_keep;
DROP TABLE deployments_keep;
DROP TABLE deployment_logs_keep;
