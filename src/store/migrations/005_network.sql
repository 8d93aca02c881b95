-- Replica addresses; the IPAM tables are migration 004 (store::ipam).
ALTER TABLE replicas ADD COLUMN address TEXT;
