-- IPAM: project subnets and container addresses (store::ipam).
CREATE TABLE net_subnets (
    project_id TEXT PRIMARY KEY,
    idx        INTEGER NOT NULL UNIQUE
) STRICT;

CREATE TABLE net_leases (
    container_id TEXT PRIMARY KEY,
    project_id   TEXT NOT NULL REFERENCES net_subnets(project_id) ON DELETE CASCADE,
    service      TEXT NOT NULL,
    host         INTEGER NOT NULL,
    UNIQUE (project_id, host)
) STRICT;
