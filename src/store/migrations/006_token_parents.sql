-- A token minted with another token remembers its parent: revoking the parent
-- revokes what it minted.
ALTER TABLE api_tokens ADD COLUMN parent_id TEXT REFERENCES api_tokens(id) ON DELETE CASCADE;
CREATE INDEX api_tokens_parent ON api_tokens(parent_id);
