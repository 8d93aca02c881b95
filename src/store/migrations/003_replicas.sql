-- Replicas: containers the engine runs, their state and restart bookkeeping.
CREATE TABLE replicas (
    id              TEXT PRIMARY KEY,
    project_id      TEXT NOT NULL,
    service         TEXT NOT NULL,
    config          TEXT NOT NULL,
    state           TEXT NOT NULL,
    pid             INTEGER,
    restarts        INTEGER NOT NULL DEFAULT 0,
    exit_code       INTEGER,
    signal          INTEGER,
    oom_killed      INTEGER NOT NULL DEFAULT 0,
    error           TEXT,
    created_at      TEXT NOT NULL,
    started_at      TEXT,
    finished_at     TEXT,
    next_restart_at INTEGER,
    window_start    INTEGER,
    window_restarts INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE INDEX replicas_project ON replicas(project_id);
