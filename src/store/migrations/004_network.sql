-- Replica addresses; the IPAM tables come from runtime::network::ipam::sql::MIGRATION.
ALTER TABLE replicas ADD COLUMN address TEXT;
