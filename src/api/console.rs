//! The console (adr/034): an interactive shell with a terminal inside a running
//! replica, over a WebSocket.
//!
//! An Operator mints a ticket (`POST …/console/tickets`): single-use, valid 30 s,
//! bound to the user, the service and one replica, kept only as a hash. The
//! WebSocket (`GET …/console/ws?ticket=`) takes the ticket as its only credential
//! (a browser cannot put a bearer token on a WebSocket), refuses a browser's
//! request from another origin, and runs a shell through the engine's `exec` with a
//! terminal. Binary frames carry the terminal's bytes both ways; the client's
//! `{"type":"resize"}` text frames resize it; the server sends `{"type":"exit"}`
//! before a clean close. The session ends, and its process group is killed, when
//! the socket closes, the shell exits, the session is idle too long or the daemon
//! stops.

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ApiResult, Kind};
use super::extract::{AuditNote, Caller, JsonBody, Paginated};
use super::services::service_row;
use crate::auth::Role;
use crate::http::context::Ctx;
use crate::http::serve::{Peer, Tunnel};
use crate::runtime::exec::{Exec, ExecSpec};
use crate::store::console::{Refused, Ticket};

/// How long a ticket may wait to be used.
pub const TICKET_TTL_SECONDS: i64 = 30;
const TICKET_PREFIX: &str = "berth_con_";
/// Terminal input held for the process, at most, before the socket is no longer
/// read (the process is not reading its input).
const MAX_PENDING_INPUT: usize = 1 << 20;
/// What the shell is: bash when the image has it, sh otherwise.
const SHELL: &str = "if command -v bash >/dev/null 2>&1; then exec bash -i; fi; exec sh -i";
/// Replica states a console can be opened in.
const OPEN: &[&str] = &["running", "unhealthy", "draining"];

/// Console sessions open now, per user (for the cap).
#[derive(Default)]
pub struct Sessions {
    per_user: Mutex<HashMap<String, u32>>,
}

/// One user's place among the open sessions; given back when dropped.
struct Slot {
    sessions: Arc<Sessions>,
    user_id: String,
}

impl Sessions {
    fn open(&self, user_id: &str) -> u32 {
        self.per_user.lock().map(|m| m.get(user_id).copied().unwrap_or(0)).unwrap_or(0)
    }

    /// Takes a place for `user_id` if it has fewer than `max` sessions open.
    fn take(&self, user_id: &str, max: u32) -> bool {
        let Ok(mut m) = self.per_user.lock() else { return false };
        let n = m.entry(user_id.to_string()).or_insert(0);
        if *n >= max {
            return false;
        }
        *n += 1;
        true
    }

    fn give_back(&self, user_id: &str) {
        if let Ok(mut m) = self.per_user.lock() {
            if let Some(n) = m.get_mut(user_id) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    m.remove(user_id);
                }
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.sessions.give_back(&self.user_id);
    }
}

/// A replica a console can be opened in.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConsoleReplica {
    pub id: String,
    /// `running`, `unhealthy` (running, failing its health check), `draining`
    /// (running, of a deployment no longer live), or a state that cannot be opened
    /// (`starting`, `exited`, `crash_loop`, …).
    pub status: String,
    pub deployment_id: Option<String>,
    pub started_at: Option<String>,
}

/// The service's replicas, for picking one to open a console in.
#[utoipa::path(get, operation_id = "console_replicas", path = "/v1/services/{id}/console/replicas", tag = "console",
    params(("id" = String, Path, description = "service id")),
    responses((status = 200, body = Paginated<ConsoleReplica>), (status = 404, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn replicas(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Paginated<ConsoleReplica>>> {
    let row = service_row(&state, &id).await?;
    let data = state
        .deployer
        .instances(&row)
        .await?
        .into_iter()
        .map(|i| ConsoleReplica {
            id: i.id,
            status: i.status,
            deployment_id: i.deployment_id,
            started_at: i.started_at,
        })
        .collect();
    Ok(Json(Paginated { data, next_cursor: None, has_more: false }))
}

/// `POST …/console/tickets` body.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTicket {
    /// The replica to open; a running replica of the live deployment when left out.
    pub replica_id: Option<String>,
}

/// A console ticket: shown once.
#[derive(Debug, Serialize, ToSchema)]
pub struct TicketGrant {
    /// The WebSocket's only credential: single-use, valid for 30 seconds.
    pub ticket: String,
    pub expires_at: String,
    pub replica_id: String,
    /// Where to open the WebSocket, the ticket included.
    pub ws_url: String,
}

/// Mints a ticket for one console session in a running replica of the service.
#[utoipa::path(post, operation_id = "console_tickets_create", path = "/v1/services/{id}/console/tickets",
    tag = "console", request_body = NewTicket, params(("id" = String, Path, description = "service id")),
    responses((status = 201, body = TicketGrant), (status = 400, body = super::error::ErrorBody),
        (status = 404, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody),
        (status = 429, body = super::error::ErrorBody), (status = 503, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_ticket(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<NewTicket>,
) -> ApiResult<impl IntoResponse> {
    let row = service_row(&state, &id).await?;
    let max = state.config.console.max_sessions_per_user;
    if state.console.open(&caller.user.id) >= max {
        return Err(too_many(max));
    }
    let Some(engine) = state.engine.as_deref() else {
        return Err(ApiError::new(Kind::Unavailable, "this daemon does not run containers"));
    };
    let mut instances = state.deployer.instances(&row).await?;
    // Healthy replicas of the live deployment first.
    instances.sort_by_key(|i| i.status != "running");
    let mut replica = None;
    for i in &instances {
        if body.replica_id.as_ref().is_some_and(|r| *r != i.id) {
            continue;
        }
        // The record says running, and so does the replica's supervisor now.
        if OPEN.contains(&i.status.as_str()) && running(engine, &i.id).await {
            replica = Some(i);
            break;
        }
        if body.replica_id.is_some() {
            return Err(ApiError::conflict(format!("replica {} is not running", i.id)));
        }
    }
    let Some(replica) = replica else {
        return Err(match &body.replica_id {
            Some(r) => ApiError::not_found(format!("service {id} has no replica {r}")),
            None => ApiError::conflict(format!("no replica of service {id} is running")),
        });
    };
    let secret = crate::auth::new_secret();
    let ticket = Ticket {
        id: crate::ids::new_id("cot"),
        user_id: caller.user.id.clone(),
        token_id: caller.token_id().map(str::to_string),
        service_id: row.id.clone(),
        project_id: row.project_id.clone(),
        replica_id: replica.id.clone(),
        created_at: crate::ids::now_rfc3339(),
        expires_at: crate::ids::unix_now() + TICKET_TTL_SECONDS,
    };
    let (t, hash) = (ticket.clone(), crate::auth::hash_secret(&secret));
    state.store.write(move |c| crate::store::console::insert(c, &t, &hash)).await?;
    let token = format!("{TICKET_PREFIX}{secret}");
    let ws_url = format!(
        "{}/v1/services/{}/console/ws?ticket={token}",
        origin_of(&state, &peer, &headers).replacen("http", "ws", 1),
        row.id
    );
    let expires_at = time::OffsetDateTime::from_unix_timestamp(ticket.expires_at)
        .map(crate::ids::format_time)
        .map_err(ApiError::internal)?;
    let note = AuditNote {
        target: Some(format!("{}/{}", row.id, ticket.replica_id)),
        project_id: Some(row.project_id),
        ..Default::default()
    };
    let grant = TicketGrant { ticket: token, expires_at, replica_id: ticket.replica_id, ws_url };
    Ok((StatusCode::CREATED, Extension(note), Json(grant)))
}

/// Whether the replica's supervisor says it is running.
async fn running(engine: &crate::engine::Engine, replica_id: &str) -> bool {
    engine.status(replica_id).await.is_ok_and(|s| s.state == crate::runtime::shim::State::Running)
}

fn too_many(max: u32) -> ApiError {
    ApiError::new(Kind::RateLimited, format!("you have {max} console sessions open, the most allowed; close one first"))
}

/// The origin (`scheme://host[:port]`) the request was made to.
fn origin_of(state: &AppState, peer: &Peer, headers: &HeaderMap) -> String {
    let scheme = if peer.tls { "https" } else { "http" };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| state.config.api.listen.to_string());
    format!("{scheme}://{host}")
}

/// `GET …/console/ws` query.
#[derive(Debug, Deserialize)]
pub struct Open {
    pub ticket: Option<String>,
    /// The replica the client means to open; refused when the ticket is for another.
    pub replica_id: Option<String>,
    /// The terminal's first size.
    pub cols: Option<u16>,
    pub rows: Option<u16>,
}

/// A console session: upgrades to a WebSocket running a shell with a terminal in
/// the ticket's replica. The ticket is the only credential; a browser's `Origin`
/// must be the origin the request was made to.
#[utoipa::path(get, operation_id = "console_ws", path = "/v1/services/{id}/console/ws", tag = "console",
    params(("id" = String, Path, description = "service id"),
        ("ticket" = String, Query, description = "from POST /v1/services/{id}/console/tickets"),
        ("replica_id" = Option<String>, Query, description = "must be the ticket's replica when given"),
        ("cols" = Option<u16>, Query, description = "the terminal's first width"),
        ("rows" = Option<u16>, Query, description = "the terminal's first height")),
    responses((status = 101, description = "the console's WebSocket"),
        (status = 400, body = super::error::ErrorBody), (status = 401, body = super::error::ErrorBody),
        (status = 403, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody),
        (status = 429, body = super::error::ErrorBody), (status = 503, body = super::error::ErrorBody)))]
pub async fn socket(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(open): Query<Open>,
    Extension(peer): Extension<Peer>,
    Extension(ctx): Extension<Ctx>,
    headers: HeaderMap,
    req: axum::extract::Request,
) -> Response {
    match accept(state, id, open, peer, ctx, headers, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn accept(
    state: AppState,
    id: String,
    open: Open,
    peer: Peer,
    ctx: Ctx,
    headers: HeaderMap,
    req: axum::extract::Request,
) -> ApiResult<Response> {
    // What can be refused without the ticket is refused first, so a wrong request
    // does not spend it.
    let Some(presented) = open.ticket.filter(|t| !t.is_empty()) else {
        return Err(ApiError::new(
            Kind::MissingToken,
            "a console needs ?ticket= from POST /v1/services/{id}/console/tickets",
        ));
    };
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        if !allowed_origin(&state, &peer, &headers, origin) {
            return Err(ApiError::forbidden(format!("a console cannot be opened from origin {origin:?}")));
        }
    }
    let (mut parts, _body) = req.into_parts();
    let Ok(upgrade) = WebSocketUpgrade::from_request_parts(&mut parts, &state).await else {
        return Err(ApiError::invalid("this is a WebSocket: send the upgrade request of one"));
    };
    let Some(engine) = state.engine.clone() else {
        return Err(ApiError::new(Kind::Unavailable, "this daemon does not run containers"));
    };
    let bad_ticket = || ApiError::new(Kind::InvalidToken, "the console ticket is not valid");
    let secret = presented.strip_prefix(TICKET_PREFIX).filter(|s| crate::auth::is_secret(s)).ok_or_else(bad_ticket)?;
    let hash = crate::auth::hash_secret(secret);
    let now = crate::ids::unix_now();
    let ticket = match state.store.write(move |c| crate::store::console::redeem(c, &hash, now)).await? {
        Ok(t) => t,
        Err(Refused::Unknown) => return Err(bad_ticket()),
        Err(Refused::Used) => {
            return Err(ApiError::new(Kind::InvalidToken, "the console ticket was used already; mint another"));
        }
        Err(Refused::Expired) => {
            return Err(ApiError::new(Kind::TokenExpired, "the console ticket has expired; mint another"));
        }
    };
    if ticket.service_id != id || open.replica_id.as_ref().is_some_and(|r| *r != ticket.replica_id) {
        return Err(ApiError::new(Kind::InvalidToken, "the console ticket is for another service or replica"));
    }
    // The user must still be an Operator of the project (a role taken away in the
    // ticket's 30 seconds counts).
    let (pid, uid) = (ticket.project_id.clone(), ticket.user_id.clone());
    let (user, role) = state
        .store
        .read(move |c| Ok((crate::store::users::get(c, &uid)?, crate::store::projects::role_of(c, &pid, &uid)?)))
        .await?;
    let Some(user) = user else { return Err(bad_ticket()) };
    if !user.super_admin && role.is_none_or(|r| r < Role::Operator) {
        return Err(ApiError::forbidden("opening a console needs the operator role in the project"));
    }
    if !running(&engine, &ticket.replica_id).await {
        return Err(ApiError::conflict(format!("replica {} is not running", ticket.replica_id)));
    }
    let max = state.config.console.max_sessions_per_user;
    if !state.console.take(&user.id, max) {
        return Err(too_many(max));
    }
    let slot = Slot { sessions: state.console.clone(), user_id: user.id.clone() };
    let size = match (open.rows, open.cols) {
        (Some(r), Some(c)) if r > 0 && c > 0 => (r.min(1000), c.min(1000)),
        _ => (24, 80),
    };
    let spec = ExecSpec {
        args: vec!["/bin/sh".into(), "-c".into(), SHELL.into()],
        env: vec!["TERM=xterm-256color".into()],
        tty: true,
        size: Some(size),
        ..Default::default()
    };
    let exec = engine.exec(&ticket.replica_id, spec).await.map_err(|e| ApiError::conflict(e.to_string()))?;
    let entry = ctx.audit_entry(
        &user,
        ticket.token_id.as_deref(),
        "GET /v1/services/{id}/console/ws",
        format!("{}/{}", ticket.service_id, ticket.replica_id),
        Some(ticket.project_id.clone()),
        101,
    );
    if let Err(e) = state.store.write(move |c| crate::store::audit::insert(c, &entry)).await {
        // No audit entry, no session.
        let mut exec = exec;
        exec.kill();
        let _ = tokio::task::spawn_blocking(move || exec.child.wait()).await;
        return Err(e.into());
    }
    tracing::info!(user = user.username, replica = ticket.replica_id, request_id = ctx.request_id, "console opened");
    let tunnel = parts.extensions.get::<Tunnel>().cloned();
    let frame_limit = state.config.console.max_frame_bytes;
    let idle = Duration::from_secs(state.config.console.idle_timeout_seconds);
    let session = Session { engine, replica_id: ticket.replica_id, idle, _slot: slot, tunnel };
    Ok(upgrade
        .max_message_size(frame_limit)
        .max_frame_size(frame_limit)
        .on_failed_upgrade(|e| tracing::debug!(error = %e, "console upgrade failed"))
        .on_upgrade(move |ws| session.run(ws, exec)))
}

/// Whether a browser page at `origin` may open a console here: the origin the
/// request was made to, or the control domain over https.
fn allowed_origin(state: &AppState, peer: &Peer, headers: &HeaderMap, origin: &str) -> bool {
    let origin = origin.trim_end_matches('/');
    if origin.eq_ignore_ascii_case(&origin_of(state, peer, headers)) {
        return true;
    }
    state.config.ingress.control_domain.as_deref().is_some_and(|d| {
        origin.strip_prefix("https://").is_some_and(|h| {
            let host = h.rsplit_once(':').filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit())).map_or(h, |(h, _)| h);
            host.eq_ignore_ascii_case(d.trim_end_matches('.'))
        })
    })
}

/// A session once the socket is open.
struct Session {
    engine: Arc<crate::engine::Engine>,
    replica_id: String,
    idle: Duration,
    _slot: Slot,
    tunnel: Option<Tunnel>,
}

/// How a session ended.
enum End {
    /// The shell's terminal closed: it exited (or was killed).
    Exited,
    /// The client closed the socket, or it broke.
    ClientGone,
    /// Close with this code and reason; the process is killed.
    Close(u16, String),
}

impl Session {
    async fn run(self, mut ws: WebSocket, mut exec: Exec) {
        let end = match exec.terminal.take() {
            // SAFETY: the fd is the pty master this File owns, open until the
            // AsyncFd (which owns the File) is dropped; a File's as_raw_fd is
            // always that same fd.
            Some(term) => match unsafe { AsyncFd::register(term) } {
                Ok(term) => self.pump(&mut ws, &term).await,
                Err(e) => End::Close(1011, format!("the terminal failed: {e}")),
            },
            None => End::Close(1011, "the process has no terminal".into()),
        };
        if !matches!(end, End::Exited) {
            exec.kill();
        }
        let status = tokio::task::spawn_blocking(move || {
            let status = exec.child.wait();
            drop(exec);
            status
        })
        .await;
        let close = match end {
            End::ClientGone => None,
            End::Close(code, reason) => Some((code, reason)),
            End::Exited => {
                let mut exit = serde_json::json!({"type": "exit"});
                match status {
                    Ok(Ok(s)) if s.code().is_some() => exit["exit_code"] = s.code().into(),
                    Ok(Ok(s)) => exit["signal"] = s.signal().into(),
                    _ => exit["exit_code"] = serde_json::Value::Null,
                }
                // A shell killed because its replica stopped says so (the replica's
                // end is recorded a moment after its processes are killed).
                let killed = status.as_ref().is_ok_and(|s| s.as_ref().is_ok_and(|s| s.code().is_none_or(|c| c > 128)));
                if killed && self.replica_ended().await {
                    exit["reason"] = "the replica stopped".into();
                }
                let _ = ws.send(Message::Text(exit.to_string().into())).await;
                Some((1000, String::new()))
            }
        };
        if let Some((code, reason)) = close {
            let _ = ws.send(Message::Close(Some(CloseFrame { code, reason: reason.into() }))).await;
        }
        tracing::info!(replica = self.replica_id, "console closed");
    }

    /// Whether the replica has stopped (or stops within a second).
    async fn replica_ended(&self) -> bool {
        for _ in 0..10 {
            if !running(&self.engine, &self.replica_id).await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// Copies between the socket and the terminal until one of them ends.
    async fn pump(&self, ws: &mut WebSocket, term: &AsyncFd<std::fs::File>) -> End {
        if let Err(e) = rustix::io::ioctl_fionbio(term.get_ref(), true) {
            return End::Close(1011, format!("the terminal failed: {e}"));
        }
        let mut stop = self.tunnel.as_ref().map(|t| t.stop.clone());
        let mut input: VecDeque<u8> = VecDeque::new();
        let mut buf = vec![0u8; 32 * 1024];
        let idle = tokio::time::sleep(self.idle);
        tokio::pin!(idle);
        loop {
            tokio::select! {
                ready = term.readable() => {
                    let Ok(mut guard) = ready else { return End::Exited };
                    match guard.try_io(|t| t.get_ref().read(&mut buf)) {
                        Err(_would_block) => continue,
                        // EIO: runc and everything on the terminal are gone.
                        Ok(Ok(0)) | Ok(Err(_)) => return End::Exited,
                        Ok(Ok(n)) => {
                            idle.as_mut().reset(tokio::time::Instant::now() + self.idle);
                            if ws.send(Message::Binary(buf[..n].to_vec().into())).await.is_err() {
                                return End::ClientGone;
                            }
                        }
                    }
                }
                ready = term.writable(), if !input.is_empty() => {
                    let Ok(mut guard) = ready else { return End::Exited };
                    let (head, _) = input.as_slices();
                    match guard.try_io(|t| t.get_ref().write(head)) {
                        Err(_would_block) => continue,
                        Ok(Ok(n)) => { input.drain(..n); }
                        Ok(Err(_)) => return End::Exited,
                    }
                }
                msg = ws.recv(), if input.len() < MAX_PENDING_INPUT => {
                    idle.as_mut().reset(tokio::time::Instant::now() + self.idle);
                    match msg {
                        Some(Ok(Message::Binary(b))) => input.extend(b.iter()),
                        Some(Ok(Message::Text(t))) => {
                            if let Err(why) = control(term, t.as_str()) {
                                return End::Close(1003, why);
                            }
                        }
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                        Some(Ok(Message::Close(_))) | None => return End::ClientGone,
                        Some(Err(e)) => {
                            let capacity = std::error::Error::source(&e).is_some_and(|s| {
                                s.downcast_ref::<tungstenite::Error>()
                                    .is_some_and(|t| matches!(t, tungstenite::Error::Capacity(_)))
                            });
                            if capacity {
                                return End::Close(1009, "message too big".into());
                            }
                            return End::ClientGone;
                        }
                    }
                }
                () = &mut idle => {
                    return End::Close(1008, format!("idle for {} seconds", self.idle.as_secs()));
                }
                _ = async { stop.as_mut()?.wait_for(|s| *s).await.ok().map(|_| ()) }, if stop.is_some() => {
                    return End::Close(1001, "the server is shutting down".into());
                }
            }
        }
    }
}

/// A client's text frame: `{"type":"resize","cols":N,"rows":N}`.
fn control(term: &AsyncFd<std::fs::File>, text: &str) -> Result<(), String> {
    #[derive(Deserialize)]
    #[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
    enum Control {
        Resize { cols: u16, rows: u16 },
    }
    match serde_json::from_str::<Control>(text) {
        Ok(Control::Resize { cols, rows }) => {
            if cols == 0 || rows == 0 || cols > 1000 || rows > 1000 {
                return Err("resize: cols and rows must be between 1 and 1000".into());
            }
            let size = rustix::termios::Winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
            rustix::termios::tcsetwinsize(term.get_ref(), size).map_err(|e| format!("resize: {e}"))
        }
        Err(e) => Err(format!("text frames are JSON {{\"type\":\"resize\",\"cols\",\"rows\"}}: {e}")),
    }
}
