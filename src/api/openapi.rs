//! The OpenAPI 3.1 document, generated from the handlers' annotations and types.

use axum::http::header;
use axum::response::IntoResponse;
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

#[derive(OpenApi)]
#[openapi(
    info(title = "berth", description = "The berth management API. Errors use the envelope \
        {\"error\": {\"code\", \"message\", \"request_id\"}}; lists are cursor-paginated."),
    paths(
        super::health::healthz,
        super::metrics::scrape,
        document,
        super::console_page::redirect,
        super::console_page::page,
        super::console_page::file,
        super::node::get_node,
        super::session::bootstrap,
        super::session::login,
        super::session::logout,
        super::session::list_sessions,
        super::session::revoke_session,
        super::session::revoke_other_sessions,
        super::session::me,
        super::users::list,
        super::users::create,
        super::users::delete,
        super::tokens::list,
        super::tokens::create,
        super::tokens::revoke,
        super::projects::list,
        super::projects::create,
        super::projects::get,
        super::projects::update,
        super::projects::delete,
        super::projects::list_members,
        super::projects::add_member,
        super::projects::remove_member,
        super::services::list,
        super::services::create,
        super::services::get,
        super::services::update,
        super::services::delete,
        super::services::start,
        super::services::stop,
        super::services::restart,
        super::services::deployments,
        super::services::logs,
        super::services::logs_stream,
        super::services::metrics,
        super::services::requests,
        super::webhooks::enable,
        super::webhooks::get,
        super::webhooks::disable,
        super::webhooks::receive,
        super::domains::list,
        super::uploads::create,
        super::domains::create,
        super::domains::get,
        super::domains::delete,
        super::domains::verify,
        super::deployments::create,
        super::deployments::get,
        super::deployments::cancel,
        super::deployments::rollback,
        super::deployments::logs_stream,
        super::deployments::routes,
        super::jobs::list,
        super::jobs::create,
        super::jobs::get,
        super::jobs::update,
        super::jobs::delete,
        super::jobs::run,
        super::jobs::runs,
        super::jobs::run_logs,
        super::console::replicas,
        super::console::create_ticket,
        super::console::socket,
        super::builds::status,
        super::certificates::renew,
        super::credentials::list_registries,
        super::credentials::create_registry,
        super::credentials::get_registry,
        super::credentials::update_registry,
        super::credentials::delete_registry,
        super::credentials::get_git,
        super::credentials::set_git,
        super::credentials::delete_git,
        super::audit::list,
        super::registry::repositories,
        super::registry::status,
        super::registry::gc,
        super::cache::status,
        super::cache::gc,
        crate::registry::http::base,
        crate::registry::http::token,
        crate::registry::http::v2_get,
        crate::registry::http::v2_head,
        crate::registry::http::v2_post,
        crate::registry::http::v2_put,
        crate::registry::http::v2_patch,
        crate::registry::http::v2_delete,
    ),
    modifiers(&Bearer)
)]
pub struct ApiDoc;

struct Bearer;

impl utoipa::Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "basic",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Basic).build()),
        );
        openapi.info.version = env!("CARGO_PKG_VERSION").to_string();
    }
}

/// The rendered document, made on first use and kept.
pub fn render() -> axum::body::Bytes {
    static DOC: std::sync::OnceLock<axum::body::Bytes> = std::sync::OnceLock::new();
    DOC.get_or_init(|| ApiDoc::openapi().to_json().unwrap_or_default().into()).clone()
}

/// This document.
#[utoipa::path(get, operation_id = "openapi_document", path = "/v1/openapi.json", tag = "node", responses((status = 200, description = "OpenAPI 3.1 document")))]
pub async fn document() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], render())
}
