-- Services, their deployments (a state machine) and each deployment's log.
CREATE TABLE services (
    id                    TEXT PRIMARY KEY,
    project_id            TEXT NOT NULL REFERENCES projects(id),
    name                  TEXT NOT NULL,
    -- The service's settings as JSON (secret env values sealed).
    spec                  TEXT NOT NULL,
    -- Whether its replicas should run (start/stop).
    desired               TEXT NOT NULL CHECK (desired IN ('running', 'stopped')),
    current_deployment_id TEXT,
    follow_repository     TEXT,
    follow_tag            TEXT,
    created_at            TEXT NOT NULL,
    updated_at            TEXT NOT NULL,
    UNIQUE (project_id, name)
) STRICT;
CREATE INDEX services_follow ON services(follow_repository, follow_tag) WHERE follow_repository IS NOT NULL;

CREATE TABLE deployments (
    id           TEXT PRIMARY KEY,
    service_id   TEXT NOT NULL REFERENCES services(id) ON DELETE CASCADE,
    project_id   TEXT NOT NULL,
    source       TEXT NOT NULL,
    status       TEXT NOT NULL
        CHECK (status IN ('queued', 'pulling', 'starting', 'live', 'failed', 'cancelled', 'superseded')),
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
    WHERE status IN ('queued', 'pulling', 'starting');

CREATE TABLE deployment_logs (
    deployment_id TEXT NOT NULL REFERENCES deployments(id) ON DELETE CASCADE,
    seq           INTEGER NOT NULL,
    at            TEXT NOT NULL,
    line          TEXT NOT NULL,
    PRIMARY KEY (deployment_id, seq)
) STRICT;
