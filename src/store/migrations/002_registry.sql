-- The hosted OCI registry: repositories, blobs and their per-repository links,
-- manifests with their references, tags, upload sessions, GC bookkeeping.
-- Times here are unix seconds: GC compares them against a grace period.
CREATE TABLE repositories (
    id         INTEGER PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    project_id TEXT NOT NULL REFERENCES projects(id),
    created_at INTEGER NOT NULL
) STRICT;
CREATE INDEX repositories_project ON repositories(project_id);

CREATE TABLE blobs (
    digest     TEXT PRIMARY KEY,
    size       INTEGER NOT NULL,
    created_at INTEGER NOT NULL
) STRICT;

-- A blob is visible in a repository only through a link: pushing, mounting, or
-- being a manifest of that repository.
CREATE TABLE repo_blobs (
    repo_id   INTEGER NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
    digest    TEXT NOT NULL REFERENCES blobs(digest),
    linked_at INTEGER NOT NULL,
    PRIMARY KEY (repo_id, digest)
) STRICT;
CREATE INDEX repo_blobs_digest ON repo_blobs(digest);

CREATE TABLE manifests (
    repo_id       INTEGER NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
    digest        TEXT NOT NULL,
    media_type    TEXT NOT NULL,
    size          INTEGER NOT NULL,
    artifact_type TEXT,
    subject       TEXT,
    annotations   TEXT,
    pushed_at     INTEGER NOT NULL,
    PRIMARY KEY (repo_id, digest)
) STRICT;
CREATE INDEX manifests_subject ON manifests(repo_id, subject);

CREATE TABLE manifest_refs (
    repo_id  INTEGER NOT NULL,
    manifest TEXT NOT NULL,
    child    TEXT NOT NULL,
    kind     TEXT NOT NULL CHECK (kind IN ('blob', 'manifest')),
    PRIMARY KEY (repo_id, manifest, child),
    FOREIGN KEY (repo_id, manifest) REFERENCES manifests(repo_id, digest) ON DELETE CASCADE
) STRICT;
CREATE INDEX manifest_refs_child ON manifest_refs(repo_id, child);

CREATE TABLE tags (
    repo_id    INTEGER NOT NULL,
    name       TEXT NOT NULL,
    digest     TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (repo_id, name),
    FOREIGN KEY (repo_id, digest) REFERENCES manifests(repo_id, digest) ON DELETE CASCADE
) STRICT;

CREATE TABLE uploads (
    id         TEXT PRIMARY KEY,
    repo_id    INTEGER NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
    started_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
) STRICT;

CREATE TABLE registry_gc (
    id                INTEGER PRIMARY KEY CHECK (id = 1),
    finished_at       TEXT NOT NULL,
    duration_ms       INTEGER NOT NULL,
    manifests_deleted INTEGER NOT NULL,
    blobs_deleted     INTEGER NOT NULL,
    bytes_freed       INTEGER NOT NULL,
    uploads_purged    INTEGER NOT NULL
) STRICT;
