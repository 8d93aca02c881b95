-- Custom domains attached to services, with their ownership verification.
CREATE TABLE domains (
    id                 TEXT PRIMARY KEY,
    service_id         TEXT NOT NULL REFERENCES services(id) ON DELETE CASCADE,
    project_id         TEXT NOT NULL,
    -- Lowercase; one owner on the whole node (adr/027).
    hostname           TEXT NOT NULL UNIQUE,
    -- `issued` is never stored: it is read from the certificate store.
    status             TEXT NOT NULL CHECK (status IN ('pending', 'verified', 'error')),
    -- What `GET /.well-known/berth-challenge/<token>` must answer (64 hex digits).
    verification_token TEXT NOT NULL,
    error              TEXT,
    created_at         TEXT NOT NULL,
    verified_at        TEXT
) STRICT;
CREATE INDEX domains_service ON domains(service_id, id);
