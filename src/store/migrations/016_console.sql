-- Console tickets (adr/034): single-use, short-lived credentials for one console
-- WebSocket, bound to a user, a service and one of its replicas. Only the SHA-256
-- of the ticket is kept; a redeemed ticket keeps its row (used_at set) until it
-- would have expired, then rows are purged.
CREATE TABLE console_tickets (
    id          TEXT PRIMARY KEY,
    secret_hash BLOB NOT NULL UNIQUE,
    user_id     TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    -- The API token it was minted with, if any (for the audit entry of the session).
    token_id    TEXT,
    service_id  TEXT NOT NULL REFERENCES services(id) ON DELETE CASCADE,
    project_id  TEXT NOT NULL,
    replica_id  TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    -- Unix seconds.
    expires_at  INTEGER NOT NULL,
    used_at     TEXT
) STRICT;
CREATE INDEX console_tickets_expiry ON console_tickets(expires_at);
