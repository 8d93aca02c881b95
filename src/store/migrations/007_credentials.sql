-- Credentials a project keeps for the outside world: logins to external registries
-- and one Git deploy key. Secret parts are stored only sealed (`age:` + base64, see
-- src/secrets), beside the id of the host key that sealed them. They belong to the
-- project and go with it.
CREATE TABLE registry_credentials (
    id              TEXT PRIMARY KEY,
    project_id      TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    name            TEXT NOT NULL,
    server          TEXT NOT NULL,
    username        TEXT NOT NULL,
    password_sealed TEXT NOT NULL CHECK (password_sealed LIKE 'age:%'),
    sealed_by       TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    UNIQUE (project_id, name)
) STRICT;
CREATE INDEX registry_credentials_server ON registry_credentials(project_id, server);

CREATE TABLE git_credentials (
    project_id         TEXT PRIMARY KEY REFERENCES projects(id) ON DELETE CASCADE,
    name               TEXT NOT NULL,
    key_type           TEXT NOT NULL,
    fingerprint        TEXT NOT NULL,
    private_key_sealed TEXT NOT NULL CHECK (private_key_sealed LIKE 'age:%'),
    known_hosts        TEXT,
    sealed_by          TEXT NOT NULL,
    created_at         TEXT NOT NULL,
    updated_at         TEXT NOT NULL
) STRICT;
