-- Build contexts uploaded for `Upload` deployments (adr/032). The file lives at
-- <data_dir>/uploads/<id>.archive; a row goes with its service (the files of rows
-- gone are swept by the expiry worker).
CREATE TABLE build_uploads (
    id             TEXT PRIMARY KEY,
    service_id     TEXT NOT NULL REFERENCES services(id) ON DELETE CASCADE,
    project_id     TEXT NOT NULL,
    -- Bytes as uploaded, and what the archive unpacks to.
    bytes          INTEGER NOT NULL,
    unpacked_bytes INTEGER NOT NULL,
    entries        INTEGER NOT NULL,
    compression    TEXT NOT NULL CHECK (compression IN ('uncompressed', 'gzip', 'zstd')),
    created_at     TEXT NOT NULL,
    -- When a build last unpacked it.
    used_at        TEXT
) STRICT;

CREATE INDEX build_uploads_by_service ON build_uploads (service_id, created_at);
