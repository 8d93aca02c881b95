//! API token scopes: the names a token may be narrowed to (see adr/004).

use serde::Serialize;

/// One scope. A token holding a scope may call the routes that require it, within
/// its owner's roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Scope {
    NodeRead,
    ProjectsRead,
    ProjectsWrite,
    UsersRead,
    UsersWrite,
    TokensRead,
    TokensWrite,
    AuditRead,
    ServicesRead,
    ServicesWrite,
    DeploymentsWrite,
    LogsRead,
    Console,
    JobsRead,
    JobsWrite,
    RegistryPull,
    RegistryPush,
    MetricsRead,
}

/// Every scope with its wire name, in documentation order.
pub const ALL: &[(Scope, &str)] = &[
    (Scope::NodeRead, "node:read"),
    (Scope::ProjectsRead, "projects:read"),
    (Scope::ProjectsWrite, "projects:write"),
    (Scope::UsersRead, "users:read"),
    (Scope::UsersWrite, "users:write"),
    (Scope::TokensRead, "tokens:read"),
    (Scope::TokensWrite, "tokens:write"),
    (Scope::AuditRead, "audit:read"),
    (Scope::ServicesRead, "services:read"),
    (Scope::ServicesWrite, "services:write"),
    (Scope::DeploymentsWrite, "deployments:write"),
    (Scope::LogsRead, "logs:read"),
    (Scope::Console, "console"),
    (Scope::JobsRead, "jobs:read"),
    (Scope::JobsWrite, "jobs:write"),
    (Scope::RegistryPull, "registry:pull"),
    (Scope::RegistryPush, "registry:push"),
    (Scope::MetricsRead, "metrics:read"),
];

/// The wildcard: every scope the owner's roles allow, including scopes added later.
pub const WILDCARD: &str = "*";

impl Scope {
    pub fn as_str(self) -> &'static str {
        ALL.iter().find(|(s, _)| *s == self).map(|(_, n)| *n).unwrap_or("")
    }

    pub fn parse(name: &str) -> Option<Scope> {
        ALL.iter().find(|(_, n)| *n == name).map(|(s, _)| *s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for (s, n) in ALL {
            assert_eq!(Scope::parse(n), Some(*s));
            assert_eq!(s.as_str(), *n);
        }
        assert_eq!(Scope::parse("root"), None);
    }
}
