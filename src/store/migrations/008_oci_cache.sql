-- The layer cache: blobs (manifests, configs, layers) that pulls from external
-- registries brought into the blob store, each also in `blobs` so the registry
-- knows the file. Registry GC keeps any blob with a row here; cache GC evicts the
-- least recently used down to `[cache] max_bytes`. Times are unix seconds.
CREATE TABLE oci_cache (
    digest       TEXT PRIMARY KEY,
    size         INTEGER NOT NULL,
    kind         TEXT NOT NULL CHECK (kind IN ('index', 'manifest', 'config', 'layer')),
    -- The reference it was last pulled for (no credentials ever).
    source       TEXT NOT NULL,
    pulled_at    INTEGER NOT NULL,
    last_used_at INTEGER NOT NULL
) STRICT;
CREATE INDEX oci_cache_last_used ON oci_cache(last_used_at);

CREATE TABLE oci_cache_gc (
    id                INTEGER PRIMARY KEY CHECK (id = 1),
    finished_at       TEXT NOT NULL,
    duration_ms       INTEGER NOT NULL,
    max_bytes         INTEGER NOT NULL,
    bytes_before      INTEGER NOT NULL,
    bytes_after       INTEGER NOT NULL,
    blobs_evicted     INTEGER NOT NULL,
    blobs_kept_linked INTEGER NOT NULL,
    bytes_freed       INTEGER NOT NULL,
    skipped_pinned    INTEGER NOT NULL,
    skipped_recent    INTEGER NOT NULL,
    over_cap          INTEGER NOT NULL
) STRICT;
