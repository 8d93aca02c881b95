-- Push webhooks: the repository and branch a service deploys from on a push, with
-- the webhook's secret (sealed with the host key), and the deliveries already
-- acted on (kept for a while, so a replayed delivery starts nothing).
CREATE TABLE webhooks (
    service_id    TEXT PRIMARY KEY REFERENCES services(id) ON DELETE CASCADE,
    repo_url      TEXT NOT NULL,
    branch        TEXT NOT NULL,
    dockerfile    TEXT,
    secret_sealed TEXT NOT NULL CHECK (secret_sealed LIKE 'age:%'),
    sealed_by     TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL
) STRICT;

CREATE TABLE webhook_deliveries (
    -- No foreign key: a deleted service's rows are forgotten with the old ones.
    service_id  TEXT NOT NULL,
    -- The sender's delivery id, or `sha256:` and the digest of the body.
    delivery    TEXT NOT NULL,
    received_at TEXT NOT NULL,
    PRIMARY KEY (service_id, delivery)
) STRICT;
CREATE INDEX webhook_deliveries_age ON webhook_deliveries(received_at);
