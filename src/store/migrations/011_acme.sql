-- ACME: the account per directory, and one certificate per host name.
-- (010 is the domains migration, written on its own branch.)
CREATE TABLE acme_accounts (
    directory_url TEXT PRIMARY KEY,
    -- instant-acme's AccountCredentials (JSON, holding the account's private key),
    -- sealed with the host key (adr/018).
    credentials   TEXT NOT NULL CHECK (credentials LIKE 'age:%'),
    key_id        TEXT NOT NULL,
    created_at    TEXT NOT NULL
) STRICT;

CREATE TABLE certificates (
    host          TEXT PRIMARY KEY,
    -- The last attempt's outcome: 'issued', or 'error' (a certificate issued before
    -- may still be held and served).
    state         TEXT NOT NULL CHECK (state IN ('issued', 'error')),
    -- The PEM chain (leaf first) and its private key, sealed; NULL until issued.
    chain_pem     TEXT,
    key_sealed    TEXT CHECK (key_sealed LIKE 'age:%'),
    key_id        TEXT,
    serial        TEXT,
    not_before    TEXT,
    not_after     TEXT,
    issuer        TEXT,
    issued_at     TEXT,
    error         TEXT,
    -- Failed attempts in a row, and when the next one may start (backoff).
    failures      INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT,
    updated_at    TEXT NOT NULL,
    CHECK ((chain_pem IS NULL) = (key_sealed IS NULL))
) STRICT;
