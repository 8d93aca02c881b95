//! Container networks: a bridge per project, veth pairs, IPAM, NAT and isolation.
