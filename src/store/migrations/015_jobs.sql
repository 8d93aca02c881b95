-- Jobs (a command run in a fresh container, on a schedule and/or on demand), their
-- runs and each run's log (adr/033).
CREATE TABLE jobs (
    id              TEXT PRIMARY KEY,
    project_id      TEXT NOT NULL REFERENCES projects(id),
    name            TEXT NOT NULL,
    -- The settings as JSON (secret env values sealed).
    spec            TEXT NOT NULL,
    -- The cron expression, when the job has a schedule (the scheduler reads these).
    schedule        TEXT,
    -- Unix second up to which the schedule's fire times have been handled: the
    -- next run is the first fire time after it (missed runs are counted from it).
    schedule_cursor INTEGER,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    UNIQUE (project_id, name)
) STRICT;
CREATE INDEX jobs_scheduled ON jobs(id) WHERE schedule IS NOT NULL;

CREATE TABLE job_runs (
    id            TEXT PRIMARY KEY,
    job_id        TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    project_id    TEXT NOT NULL,
    -- What started it.
    trigger       TEXT NOT NULL CHECK (trigger IN ('schedule', 'manual', 'catch_up', 'retry')),
    status        TEXT NOT NULL
        CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'timed_out', 'cancelled', 'skipped')),
    -- 1 for a first try, n for the (n-1)th retry.
    attempt       INTEGER NOT NULL,
    -- The fire time of a scheduled (or caught-up) run.
    scheduled_for TEXT,
    replica_id    TEXT,
    exit_code     INTEGER,
    signal        INTEGER,
    error         TEXT,
    created_at    TEXT NOT NULL,
    started_at    TEXT,
    finished_at   TEXT
) STRICT;
CREATE INDEX job_runs_by_job ON job_runs(job_id, id);
CREATE INDEX job_runs_active ON job_runs(status) WHERE status IN ('queued', 'running');

CREATE TABLE job_run_logs (
    run_id TEXT NOT NULL REFERENCES job_runs(id) ON DELETE CASCADE,
    seq    INTEGER NOT NULL,
    time   TEXT NOT NULL,
    stream TEXT NOT NULL,
    line   TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
) STRICT;
