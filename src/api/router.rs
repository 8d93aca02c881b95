//! The route table: every route of the API listener (`/healthz`, `/metrics`, `/v1`,
//! `/v2` and the `/console` page) with its minimum access and token scope, in one
//! place. The router is built only from this table (`clippy.toml` forbids
//! `Router::route` elsewhere), so a route cannot be mounted without a declared role;
//! the role matrix test and the OpenAPI test both iterate it.

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;

use axum::Router;
use axum::http::Method;
use axum::routing::{MethodFilter, MethodRouter};
use tower::Layer;

use super::{
    AppState, audit, builds, cache, certificates, console, console_page, credentials, deployments, domains, health,
    jobs, metrics, middleware, node, openapi, projects, registry, services, session, tokens, uploads, users, webhooks,
};
use crate::auth::{Role, Scope};
use crate::metrics::{Protocol, UNMATCHED};
use crate::registry::http as v2;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, no token.
    Public,
    /// Only the one-time bootstrap token.
    Bootstrap,
    /// Any valid session or API token.
    Authenticated,
    /// A member of at least one project (any role), or a super-admin.
    AnyMember,
    /// An Operator (or Admin) of at least one project, or a super-admin: node-wide
    /// actions an operator may take (the layer cache's GC).
    AnyOperator,
    /// An Admin of at least one project, or a super-admin; results are filtered to
    /// the projects the caller administers.
    AnyAdmin,
    /// At least this role in the project named by the `{id}` path parameter; callers
    /// who are not members get 404, never 403.
    Project(Role),
    /// At least this role in the project of the service named by the `{id}` path
    /// parameter (one store read resolves it); invisible services are 404.
    Service(Role),
    /// At least this role in the project of the deployment named by `{id}`.
    Deployment(Role),
    /// At least this role in the project of the job named by `{id}`.
    Job(Role),
    /// At least this role in the project of the service the `{host}` path parameter
    /// routes to (the live routing table decides); a host that is not routed, or
    /// whose project the caller cannot see, is 404. The control domain is for
    /// super-admins.
    Host(Role),
    /// At least this role in the project the request body names (directly, or
    /// through the service it names): the handler checks it with
    /// [`super::middleware::require_role`], with the same 404/403 answers.
    InBody(Role),
    /// Super-admins only.
    SuperAdmin,
    /// The `/v2` registry: the handler authenticates (answering 401 with an OCI
    /// challenge) and checks the repository's project role per request: pull needs
    /// Viewer and `registry:pull`, push and delete Operator and `registry:push`.
    Registry,
}

/// One row of the route table.
pub struct Route {
    pub method: Method,
    /// axum/OpenAPI path template, e.g. `/v1/projects/{id}`.
    pub path: &'static str,
    pub access: Access,
    /// Scope an API token needs for this route (sessions have every scope).
    pub scope: Option<Scope>,
    /// The handler behind [`middleware::AuthorizeLayer`] for this row, for this method.
    pub mount: fn(AppState, &'static Route) -> MethodRouter<AppState>,
}

// The authorization wraps the handler itself (not the route axum would box around
// it): one layer less for every request to go through.
macro_rules! route {
    ($method:ident $path:literal, $access:expr, $scope:expr, $handler:path) => {
        Route {
            method: Method::$method,
            path: $path,
            access: $access,
            scope: $scope,
            mount: |state, route| {
                let handler = axum::handler::Handler::with_state($handler, state.clone());
                axum::routing::on_service(
                    MethodFilter::$method,
                    middleware::AuthorizeLayer::new(state, route).layer(handler),
                )
            },
        }
    };
}

use Access::*;
use Role::{Admin, Operator, Viewer};

pub static ROUTES: &[Route] = &[
    route!(GET "/healthz", Public, None, health::healthz),
    route!(GET "/metrics", SuperAdmin, Some(Scope::MetricsRead), metrics::scrape),
    route!(GET "/v1/openapi.json", Public, None, openapi::document),
    route!(GET "/console", Public, None, console_page::redirect),
    route!(GET "/console/", Public, None, console_page::page),
    route!(GET "/console/{*file}", Public, None, console_page::file),
    route!(GET "/v1/node", AnyMember, Some(Scope::NodeRead), node::get_node),
    route!(POST "/v1/bootstrap", Bootstrap, None, session::bootstrap),
    route!(POST "/v1/auth/login", Public, None, session::login),
    route!(POST "/v1/auth/logout", Authenticated, None, session::logout),
    route!(GET "/v1/auth/sessions", Authenticated, Some(Scope::TokensRead), session::list_sessions),
    route!(DELETE "/v1/auth/sessions", Authenticated, Some(Scope::TokensWrite), session::revoke_other_sessions),
    route!(DELETE "/v1/auth/sessions/{session_id}", Authenticated, Some(Scope::TokensWrite), session::revoke_session),
    route!(GET "/v1/me", Authenticated, None, session::me),
    route!(GET "/v1/users", SuperAdmin, Some(Scope::UsersRead), users::list),
    route!(POST "/v1/users", SuperAdmin, Some(Scope::UsersWrite), users::create),
    route!(DELETE "/v1/users/{user_id}", SuperAdmin, Some(Scope::UsersWrite), users::delete),
    route!(GET "/v1/api-tokens", Authenticated, Some(Scope::TokensRead), tokens::list),
    route!(POST "/v1/api-tokens", Authenticated, Some(Scope::TokensWrite), tokens::create),
    route!(DELETE "/v1/api-tokens/{token_id}", Authenticated, Some(Scope::TokensWrite), tokens::revoke),
    route!(GET "/v1/projects", Authenticated, Some(Scope::ProjectsRead), projects::list),
    route!(POST "/v1/projects", SuperAdmin, Some(Scope::ProjectsWrite), projects::create),
    route!(GET "/v1/projects/{id}", Project(Viewer), Some(Scope::ProjectsRead), projects::get),
    route!(PUT "/v1/projects/{id}", Project(Admin), Some(Scope::ProjectsWrite), projects::update),
    route!(DELETE "/v1/projects/{id}", Project(Admin), Some(Scope::ProjectsWrite), projects::delete),
    route!(GET "/v1/projects/{id}/members", Project(Viewer), Some(Scope::ProjectsRead), projects::list_members),
    route!(POST "/v1/projects/{id}/members", Project(Admin), Some(Scope::ProjectsWrite), projects::add_member),
    route!(DELETE "/v1/projects/{id}/members/{user_id}", Project(Admin), Some(Scope::ProjectsWrite), projects::remove_member),
    route!(GET "/v1/services", AnyMember, Some(Scope::ServicesRead), services::list),
    route!(POST "/v1/services", InBody(Operator), Some(Scope::ServicesWrite), services::create),
    route!(GET "/v1/services/{id}", Service(Viewer), Some(Scope::ServicesRead), services::get),
    route!(PUT "/v1/services/{id}", Service(Operator), Some(Scope::ServicesWrite), services::update),
    route!(DELETE "/v1/services/{id}", Service(Operator), Some(Scope::ServicesWrite), services::delete),
    route!(POST "/v1/services/{id}/start", Service(Operator), Some(Scope::ServicesWrite), services::start),
    route!(POST "/v1/services/{id}/stop", Service(Operator), Some(Scope::ServicesWrite), services::stop),
    route!(POST "/v1/services/{id}/restart", Service(Operator), Some(Scope::ServicesWrite), services::restart),
    route!(GET "/v1/services/{id}/deployments", Service(Viewer), Some(Scope::ServicesRead), services::deployments),
    route!(GET "/v1/services/{id}/logs", Service(Operator), Some(Scope::LogsRead), services::logs),
    route!(GET "/v1/services/{id}/logs/stream", Service(Operator), Some(Scope::LogsRead), services::logs_stream),
    route!(GET "/v1/services/{id}/metrics", Service(Viewer), Some(Scope::ServicesRead), services::metrics),
    route!(GET "/v1/services/{id}/requests", Service(Viewer), Some(Scope::ServicesRead), services::requests),
    route!(POST "/v1/services/{id}/uploads", Service(Operator), Some(Scope::ServicesWrite), uploads::create),
    route!(GET "/v1/services/{id}/domains", Service(Viewer), Some(Scope::ServicesRead), domains::list),
    route!(POST "/v1/services/{id}/domains", Service(Operator), Some(Scope::ServicesWrite), domains::create),
    route!(GET "/v1/services/{id}/domains/{domain_id}", Service(Viewer), Some(Scope::ServicesRead), domains::get),
    route!(DELETE "/v1/services/{id}/domains/{domain_id}", Service(Operator), Some(Scope::ServicesWrite), domains::delete),
    route!(POST "/v1/services/{id}/domains/{domain_id}/verify", Service(Operator), Some(Scope::ServicesWrite), domains::verify),
    route!(GET "/v1/services/{id}/webhook", Service(Viewer), Some(Scope::ServicesRead), webhooks::get),
    route!(POST "/v1/services/{id}/webhook", Service(Operator), Some(Scope::ServicesWrite), webhooks::enable),
    route!(DELETE "/v1/services/{id}/webhook", Service(Operator), Some(Scope::ServicesWrite), webhooks::disable),
    route!(POST "/v1/webhooks/git/{service_id}", Public, None, webhooks::receive),
    route!(GET "/v1/services/{id}/console/replicas", Service(Operator), Some(Scope::Console), console::replicas),
    route!(POST "/v1/services/{id}/console/tickets", Service(Operator), Some(Scope::Console), console::create_ticket),
    route!(GET "/v1/services/{id}/console/ws", Public, None, console::socket),
    route!(POST "/v1/deployments", InBody(Operator), Some(Scope::DeploymentsWrite), deployments::create),
    route!(GET "/v1/deployments/{id}", Deployment(Viewer), Some(Scope::ServicesRead), deployments::get),
    route!(POST "/v1/deployments/{id}/cancel", Deployment(Operator), Some(Scope::DeploymentsWrite), deployments::cancel),
    route!(POST "/v1/deployments/{id}/rollback", Deployment(Operator), Some(Scope::DeploymentsWrite), deployments::rollback),
    route!(GET "/v1/deployments/{id}/logs/stream", Deployment(Viewer), Some(Scope::LogsRead), deployments::logs_stream),
    route!(GET "/v1/builds/status", AnyMember, Some(Scope::NodeRead), builds::status),
    route!(GET "/v1/jobs", AnyMember, Some(Scope::JobsRead), jobs::list),
    route!(POST "/v1/jobs", InBody(Operator), Some(Scope::JobsWrite), jobs::create),
    route!(GET "/v1/jobs/{id}", Job(Viewer), Some(Scope::JobsRead), jobs::get),
    route!(PUT "/v1/jobs/{id}", Job(Operator), Some(Scope::JobsWrite), jobs::update),
    route!(DELETE "/v1/jobs/{id}", Job(Operator), Some(Scope::JobsWrite), jobs::delete),
    route!(POST "/v1/jobs/{id}/run", Job(Operator), Some(Scope::JobsWrite), jobs::run),
    route!(GET "/v1/jobs/{id}/runs", Job(Viewer), Some(Scope::JobsRead), jobs::runs),
    route!(GET "/v1/jobs/{id}/runs/{run_id}/logs", Job(Operator), Some(Scope::LogsRead), jobs::run_logs),
    route!(GET "/v1/ingress/routes", AnyMember, Some(Scope::ServicesRead), deployments::routes),
    route!(POST "/v1/ingress/routes/{host}/renew", Host(Operator), Some(Scope::ServicesWrite), certificates::renew),
    route!(GET "/v1/projects/{id}/registries", Project(Viewer), Some(Scope::ProjectsRead), credentials::list_registries),
    route!(POST "/v1/projects/{id}/registries", Project(Admin), Some(Scope::ProjectsWrite), credentials::create_registry),
    route!(GET "/v1/projects/{id}/registries/{registry_id}", Project(Viewer), Some(Scope::ProjectsRead), credentials::get_registry),
    route!(PUT "/v1/projects/{id}/registries/{registry_id}", Project(Admin), Some(Scope::ProjectsWrite), credentials::update_registry),
    route!(DELETE "/v1/projects/{id}/registries/{registry_id}", Project(Admin), Some(Scope::ProjectsWrite), credentials::delete_registry),
    route!(GET "/v1/projects/{id}/credentials/git", Project(Viewer), Some(Scope::ProjectsRead), credentials::get_git),
    route!(POST "/v1/projects/{id}/credentials/git", Project(Admin), Some(Scope::ProjectsWrite), credentials::set_git),
    route!(DELETE "/v1/projects/{id}/credentials/git", Project(Admin), Some(Scope::ProjectsWrite), credentials::delete_git),
    route!(GET "/v1/audit", AnyAdmin, Some(Scope::AuditRead), audit::list),
    route!(GET "/v1/registry/repositories", Authenticated, Some(Scope::RegistryPull), registry::repositories),
    route!(GET "/v1/registry/status", AnyMember, Some(Scope::RegistryPull), registry::status),
    route!(POST "/v1/registry/gc", SuperAdmin, Some(Scope::RegistryPush), registry::gc),
    route!(GET "/v1/oci/cache/status", AnyMember, Some(Scope::RegistryPull), cache::status),
    route!(POST "/v1/oci/cache/gc", AnyOperator, Some(Scope::RegistryPush), cache::gc),
    route!(GET "/v2/", Registry, None, v2::base),
    route!(GET "/v2/token", Registry, None, v2::token),
    route!(GET "/v2/{*path}", Registry, None, v2::v2_get),
    route!(HEAD "/v2/{*path}", Registry, None, v2::v2_head),
    route!(POST "/v2/{*path}", Registry, None, v2::v2_post),
    route!(PUT "/v2/{*path}", Registry, None, v2::v2_put),
    route!(PATCH "/v2/{*path}", Registry, None, v2::v2_patch),
    route!(DELETE "/v2/{*path}", Registry, None, v2::v2_delete),
];

/// `/v1/services/{id}/uploads`.
fn is_upload_path(path: &str) -> bool {
    path.strip_prefix("/v1/services/")
        .and_then(|rest| rest.strip_suffix("/uploads"))
        .is_some_and(|id| !id.is_empty() && !id.contains('/'))
}

/// The two protocols of the API listener, as the outer layer needs to know them.
pub struct Surfaces {
    /// Largest `/v1` JSON body (and any `/v2` body that is not an upload or manifest).
    pub body_limit: u64,
    /// Largest build context (`POST /v1/services/{id}/uploads`).
    pub upload_limit: u64,
}

impl crate::http::Surface for Surfaces {
    fn body_limit(&self, method: &Method, path: &str) -> Option<u64> {
        if let Some(rest) = path.strip_prefix("/v2/") {
            if rest.contains("/blobs/uploads") {
                return None;
            }
            if *method == Method::PUT && rest.contains("/manifests/") {
                return Some(crate::registry::manifests::MAX_MANIFEST_BYTES as u64);
            }
        }
        if *method == Method::POST && is_upload_path(path) {
            return Some(self.upload_limit);
        }
        Some(self.body_limit)
    }

    fn route_label(&self, path: &str, matched: Option<&str>) -> (Protocol, &'static str) {
        if path == "/v2" || path.starts_with("/v2/") {
            return (Protocol::Registry, v2::route_template(path));
        }
        static TEMPLATES: OnceLock<HashMap<&'static str, &'static str>> = OnceLock::new();
        let templates = TEMPLATES.get_or_init(|| ROUTES.iter().map(|r| (r.path, r.path)).collect());
        (Protocol::Api, matched.and_then(|m| templates.get(m).copied()).unwrap_or(UNMATCHED))
    }

    fn reject(&self, path: &str, rejection: crate::http::Rejection) -> axum::response::Response {
        use axum::response::IntoResponse;
        if path.starts_with("/v2/") {
            crate::registry::error::RegistryError::from(rejection).into_response()
        } else {
            super::error::ApiError::from(rejection).into_response()
        }
    }
}

/// Builds the whole HTTP app from the route table.
pub fn build(state: AppState) -> Router {
    let mut by_path: BTreeMap<&'static str, MethodRouter<AppState>> = BTreeMap::new();
    for route in ROUTES {
        let guarded = (route.mount)(state.clone(), route);
        let merged = match by_path.remove(route.path) {
            Some(existing) => existing.merge(guarded),
            None => guarded,
        };
        by_path.insert(route.path, merged);
    }
    let mut router = Router::new();
    for (path, methods) in by_path {
        #[expect(clippy::disallowed_methods, reason = "the one place routes are mounted")]
        {
            router = router.route(path, methods);
        }
    }
    router
        .fallback(middleware::not_found)
        .method_not_allowed_fallback(middleware::method_not_allowed)
        .layer(crate::http::context::ContextLayer::new(state.gate.clone()))
        .with_state(state)
}

/// The table row for a method and path template, if any.
pub fn find(method: &Method, path: &str) -> Option<&'static Route> {
    ROUTES.iter().find(|r| r.method == *method && r.path == path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_no_duplicates_and_every_path_is_versioned() {
        let mut seen = std::collections::HashSet::new();
        for r in ROUTES {
            assert!(seen.insert((r.method.clone(), r.path)), "duplicate {} {}", r.method, r.path);
            assert!(
                r.path == "/healthz"
                    || r.path == "/metrics"
                    || r.path == "/console"
                    || r.path.starts_with("/console/")
                    || r.path.starts_with("/v1/")
                    || r.path.starts_with("/v2/"),
                "{}",
                r.path
            );
            assert_eq!(r.access == Access::Registry, r.path.starts_with("/v2/"), "{}", r.path);
            if matches!(r.access, Access::Project(_) | Access::Service(_) | Access::Deployment(_) | Access::Job(_)) {
                assert!(r.path.contains("{id}"), "{} is project-scoped but has no {{id}}", r.path);
            }
            if matches!(r.access, Access::Host(_)) {
                assert!(r.path.contains("{host}"), "{} is host-scoped but has no {{host}}", r.path);
            }
            if r.path.starts_with("/console") {
                assert!(r.access == Access::Public && r.method == Method::GET, "{} is part of the public page", r.path);
            }
            if matches!(r.access, Access::Public | Access::Bootstrap | Access::Registry) {
                assert!(r.scope.is_none(), "{} is public but declares a scope", r.path);
            }
        }
    }
}
