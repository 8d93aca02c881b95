//! The console: tickets, and a shell with a terminal inside a replica over a
//! WebSocket, as a client sees it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::Message;

use crate::deployments::{Node, deploy, node, project_id, push_web, service, settle, until};
use crate::harness::Client;

/// A live service of `alpha` with one replica (busybox's httpd); its id and the
/// replica's.
fn shell_service(admin: &Client, name: &str) -> (String, String) {
    let project = project_id(admin, "alpha");
    let repo = format!("alpha/{name}");
    push_web(admin, &repo, "v1", "hello", true);
    let svc = service(admin, json!({"project_id": project, "name": name, "port": 8080, "replicas": 1}));
    let dep = deploy(admin, &svc, &repo, "v1");
    assert_eq!(settle(admin, &dep, 60)["status"], "live");
    let replicas = admin.get(&format!("/v1/services/{svc}/console/replicas")).json();
    let data = replicas["data"].as_array().unwrap();
    assert_eq!(data.len(), 1, "{replicas}");
    assert_eq!(data[0]["status"], "running", "{replicas}");
    (svc, data[0]["id"].as_str().unwrap().to_string())
}

fn ticket(c: &Client, svc: &str, body: Value) -> String {
    let r = c.post(&format!("/v1/services/{svc}/console/tickets"), &body);
    assert_eq!(r.status, 201, "{}", r.text());
    let t = r.json();
    assert!(t["ws_url"].as_str().unwrap().starts_with("ws://"), "{t}");
    assert!(
        t["ws_url"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/v1/services/{svc}/console/ws?ticket={}", t["ticket"].as_str().unwrap())),
        "{t}"
    );
    t["ticket"].as_str().unwrap().to_string()
}

type Ws = WebSocketStream<TcpStream>;

/// Opens `path` as a WebSocket; the refusal's status and body otherwise.
async fn open(addr: SocketAddr, path: &str, origin: Option<&str>) -> Result<Ws, (u16, String)> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
    if let Some(o) = origin {
        req.headers_mut().insert("Origin", o.parse().unwrap());
    }
    match tokio_tungstenite::client_async(req, stream).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            Err((r.status().as_u16(), String::from_utf8_lossy(r.body().as_deref().unwrap_or_default()).into()))
        }
        Err(e) => panic!("{path}: {e}"),
    }
}

fn ws_path(svc: &str, ticket: &str) -> String {
    format!("/v1/services/{svc}/console/ws?ticket={ticket}")
}

/// What a console session showed: the terminal's bytes, the exit message, the close.
#[derive(Default, Debug)]
struct Seen {
    out: String,
    exit: Option<Value>,
    close: Option<(u16, String)>,
    ended: bool,
}

async fn type_in(ws: &mut Ws, s: &str) {
    ws.send(Message::Binary(s.as_bytes().to_vec().into())).await.unwrap();
}

/// Reads the session until `done` says so or it ends; fails after `secs`.
async fn read_until(ws: &mut Ws, seen: &mut Seen, secs: u64, what: &str, done: impl Fn(&Seen) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done(seen) {
        assert!(!seen.ended, "the session ended before {what}: {seen:?}");
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(msg) = tokio::time::timeout(left, ws.next()).await else {
            panic!("after {secs} s, no {what}: {seen:?}");
        };
        match msg {
            Some(Ok(Message::Binary(b))) => seen.out.push_str(&String::from_utf8_lossy(&b)),
            Some(Ok(Message::Text(t))) => seen.exit = Some(serde_json::from_str(t.as_str()).unwrap()),
            Some(Ok(Message::Close(f))) => {
                seen.close =
                    Some(f.map(|f| (u16::from(f.code), f.reason.to_string())).unwrap_or((1005, String::new())));
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => seen.ended = true,
        }
    }
}

/// The processes in container `id`, as `runc ps` lists them.
fn processes(node: &Node, id: &str) -> String {
    let out = std::process::Command::new("runc")
        .arg("--root")
        .arg(node.run_dir().join("runc"))
        .args(["ps", id])
        .output()
        .unwrap();
    assert!(out.status.success(), "runc ps: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into()
}

#[test]
fn a_console_runs_a_shell_in_a_replica_and_its_tickets_are_single_use() {
    if !crate::runtime::can_run() {
        return;
    }
    let (node, admin) = node("");
    let (svc, replica) = shell_service(&admin, "shell");
    // Minted first, presented last: past its 30 seconds.
    let expiring = ticket(&admin, &svc, json!({}));
    let minted = Instant::now();
    let addr = admin.addr;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        // A command's output, and its exit status.
        let t = ticket(&admin, &svc, json!({"replica_id": replica}));
        let mut ws = open(addr, &ws_path(&svc, &t), None).await.unwrap();
        let mut seen = Seen::default();
        type_in(&mut ws, "echo hi; exit 3\r").await;
        read_until(&mut ws, &mut seen, 30, "the exit", |s| s.close.is_some()).await;
        assert!(seen.out.contains("\nhi\r\n"), "{seen:?}");
        assert_eq!(seen.exit, Some(json!({"type": "exit", "exit_code": 3})), "{seen:?}");
        assert_eq!(seen.close, Some((1000, String::new())), "{seen:?}");

        // The ticket was taken.
        let (status, body) = open(addr, &ws_path(&svc, &t), None).await.err().unwrap();
        assert_eq!(status, 401, "{body}");
        assert!(body.contains("used already"), "{body}");

        // The first size, then a resize, reach the process.
        let t = ticket(&admin, &svc, json!({}));
        let mut ws = open(addr, &format!("{}&cols=100&rows=30", ws_path(&svc, &t)), None).await.unwrap();
        let mut seen = Seen::default();
        type_in(&mut ws, "busybox stty size\r").await;
        read_until(&mut ws, &mut seen, 30, "the first size", |s| s.out.contains("30 100")).await;
        ws.send(Message::Text(json!({"type": "resize", "cols": 123, "rows": 45}).to_string().into())).await.unwrap();
        type_in(&mut ws, "busybox stty size\r").await;
        read_until(&mut ws, &mut seen, 30, "the new size", |s| s.out.contains("45 123")).await;

        // Closing the socket ends what the shell runs.
        type_in(&mut ws, "busybox sleep 4242\r").await;
        until(30, "the console's sleep runs in the replica", || {
            processes(&node, &replica).contains("sleep 4242").then_some(())
        });
        ws.close(None).await.unwrap();
        drop(ws);
        until(30, "no console process is left in the replica", || {
            let ps = processes(&node, &replica);
            // The header and the replica's own httpd.
            (ps.lines().count() == 2 && !ps.contains("4242") && !ps.contains(" sh")).then_some(())
        });

        // Past 30 seconds, a ticket is refused.
        tokio::time::sleep(Duration::from_secs(31).saturating_sub(minted.elapsed())).await;
        let (status, body) = open(addr, &ws_path(&svc, &expiring), None).await.err().unwrap();
        assert_eq!(status, 401, "{body}");
        assert!(body.contains("expired"), "{body}");
    });

    // Who opened which console on which replica.
    let audit = admin.get("/v1/audit?limit=100").json();
    let entries = audit["data"].as_array().unwrap();
    let target = format!("{svc}/{replica}");
    let by = |action: &str| {
        entries
            .iter()
            .filter(|e| e["action"] == action && e["target"] == target.as_str() && e["actor_name"] == "admin")
            .count()
    };
    assert_eq!(by("POST /v1/services/{id}/console/tickets"), 3, "{entries:?}");
    assert_eq!(by("GET /v1/services/{id}/console/ws"), 2, "{entries:?}");
}

#[test]
fn consoles_refuse_what_they_should_and_end_cleanly() {
    if !crate::runtime::can_run() {
        return;
    }
    let (node, admin) =
        node("[console]\nidle_timeout_seconds = 3\nmax_sessions_per_user = 1\nmax_frame_bytes = 4096\n");
    let (svc, replica) = shell_service(&admin, "shell");
    let (other, _) = shell_service(&admin, "other");
    let addr = admin.addr;
    let origin = format!("http://{addr}");
    // A viewer of the project sees the replicas but mints nothing.
    let project = project_id(&admin, "alpha");
    let r = admin.post("/v1/users", &json!({"username": "vera", "password": "a-long-password-1"}));
    let vera = r.json()["id"].as_str().unwrap().to_string();
    let r = admin.post(&format!("/v1/projects/{project}/members"), &json!({"user_id": vera, "role": "viewer"}));
    assert_eq!(r.status, 201, "{}", r.text());
    let viewer = node.b.login("vera", "a-long-password-1");
    let r = viewer.post(&format!("/v1/services/{svc}/console/tickets"), &json!({}));
    assert_eq!(r.status, 403, "{}", r.text());
    // Bad bodies and replicas.
    let r = admin.post(&format!("/v1/services/{svc}/console/tickets"), &json!({"replica": replica}));
    assert_eq!(r.status, 400, "{}", r.text());
    let r = admin.post(&format!("/v1/services/{svc}/console/tickets"), &json!({"replica_id": "rep_nope"}));
    assert_eq!(r.status, 404, "{}", r.text());

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        // No ticket, a made-up one, one for another service or replica.
        let (status, body) = open(addr, &format!("/v1/services/{svc}/console/ws"), None).await.err().unwrap();
        assert_eq!((status, body.contains("ticket")), (401, true), "{body}");
        let fake = format!("berth_con_{}", "a".repeat(43));
        assert_eq!(open(addr, &ws_path(&svc, &fake), None).await.err().unwrap().0, 401);
        let t = ticket(&admin, &svc, json!({}));
        let (status, body) = open(addr, &ws_path(&other, &t), None).await.err().unwrap();
        assert_eq!((status, body.contains("another service")), (401, true), "{body}");
        let t = ticket(&admin, &svc, json!({}));
        let (status, _) = open(addr, &format!("{}&replica_id=rep_else", ws_path(&svc, &t)), None).await.err().unwrap();
        assert_eq!(status, 401);

        // Another origin, and a plain GET, are refused without spending the ticket;
        // the page's own origin is fine.
        let t = ticket(&admin, &svc, json!({}));
        let (status, body) = open(addr, &ws_path(&svc, &t), Some("https://evil.example")).await.err().unwrap();
        assert_eq!(status, 403, "{body}");
        let r = admin.get(&ws_path(&svc, &t));
        assert_eq!(r.status, 400, "{}", r.text());
        let mut ws = open(addr, &ws_path(&svc, &t), Some(&origin)).await.unwrap();

        // One session per user here: a second is refused while this one is open.
        let r = admin.post(&format!("/v1/services/{svc}/console/tickets"), &json!({}));
        assert_eq!(r.status, 429, "{}", r.text());

        // A message over the limit closes the session (1009), its shell killed.
        let mut seen = Seen::default();
        type_in(&mut ws, "busybox sleep 4343\r").await;
        until(30, "the console's sleep runs", || processes(&node, &replica).contains("sleep 4343").then_some(()));
        let _ = ws.send(Message::Binary(vec![b'x'; 8192].into())).await;
        read_until(&mut ws, &mut seen, 30, "the close", |s| s.close.is_some() || s.ended).await;
        assert_eq!(seen.close.as_ref().map(|c| c.0), Some(1009), "{seen:?}");
        until(30, "the killed shell is gone", || (!processes(&node, &replica).contains("4343")).then_some(()));

        // A text frame that is not a resize closes it too (1003).
        let t = until(10, "the session's place is given back", || {
            let r = admin.post(&format!("/v1/services/{svc}/console/tickets"), &json!({}));
            (r.status == 201).then(|| r.json()["ticket"].as_str().unwrap().to_string())
        });
        let mut ws = open(addr, &ws_path(&svc, &t), None).await.unwrap();
        ws.send(Message::Text("{\"type\":\"shout\"}".into())).await.unwrap();
        let mut seen = Seen::default();
        read_until(&mut ws, &mut seen, 30, "the close", |s| s.close.is_some() || s.ended).await;
        assert_eq!(seen.close.as_ref().map(|c| c.0), Some(1003), "{seen:?}");

        // A session with nothing going on is closed after the idle timeout (1008).
        let t = until(10, "the session's place is given back", || {
            let r = admin.post(&format!("/v1/services/{svc}/console/tickets"), &json!({}));
            (r.status == 201).then(|| r.json()["ticket"].as_str().unwrap().to_string())
        });
        let mut ws = open(addr, &ws_path(&svc, &t), None).await.unwrap();
        let mut seen = Seen::default();
        read_until(&mut ws, &mut seen, 30, "the idle close", |s| s.close.is_some() || s.ended).await;
        assert_eq!(seen.close.as_ref().map(|c| c.0), Some(1008), "{seen:?}");
        assert!(seen.close.as_ref().unwrap().1.contains("idle"), "{seen:?}");

        // A replica that stops mid-session: the shell's end says so.
        let t = until(10, "the session's place is given back", || {
            let r = admin.post(&format!("/v1/services/{svc}/console/tickets"), &json!({}));
            (r.status == 201).then(|| r.json()["ticket"].as_str().unwrap().to_string())
        });
        let mut ws = open(addr, &ws_path(&svc, &t), None).await.unwrap();
        let mut seen = Seen::default();
        type_in(&mut ws, "echo ready\r").await;
        read_until(&mut ws, &mut seen, 30, "the shell", |s| s.out.contains("\nready")).await;
        assert_eq!(admin.post(&format!("/v1/services/{svc}/stop"), &json!({})).status, 202);
        read_until(&mut ws, &mut seen, 60, "the end", |s| s.close.is_some() || s.ended).await;
        let exit = seen.exit.clone().unwrap_or_else(|| panic!("no exit message: {seen:?}"));
        assert_eq!(exit["reason"], "the replica stopped", "{seen:?}");
        assert_eq!(seen.close.as_ref().map(|c| c.0), Some(1000), "{seen:?}");
        // A stopped replica has no console: 409 while its record is there (not
        // running), 404 once the stopped service's replica is removed.
        let r = admin.post(&format!("/v1/services/{svc}/console/tickets"), &json!({"replica_id": replica}));
        let refused = (r.status == 409 && r.text().contains("not running"))
            || (r.status == 404 && r.text().contains("has no replica"));
        assert!(refused, "{} {}", r.status, r.text());
        let r = admin.post(&format!("/v1/services/{svc}/console/tickets"), &json!({}));
        assert_eq!(r.status, 409, "{}", r.text());
        assert!(r.text().contains("no replica of service"), "{}", r.text());
    });
}

#[test]
fn a_daemon_stop_ends_its_consoles_and_their_shells_but_not_the_replica() {
    if !crate::runtime::can_run() {
        return;
    }
    let (mut node, admin) = node("");
    let (svc, replica) = shell_service(&admin, "shell");
    let path = ws_path(&svc, &ticket(&admin, &svc, json!({})));
    let addr = admin.addr;
    let session = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let mut ws = open(addr, &path, None).await.unwrap();
            type_in(&mut ws, "busybox sleep 4545\r").await;
            let mut seen = Seen::default();
            read_until(&mut ws, &mut seen, 60, "the close", |s| s.close.is_some() || s.ended).await;
            seen
        })
    });
    until(30, "the console's sleep runs in the replica", || {
        processes(&node, &replica).contains("sleep 4545").then_some(())
    });
    assert_eq!(node.b.stop(), Some(0), "{}", node.b.log());
    let seen = session.join().unwrap();
    assert_eq!(seen.close.as_ref().map(|c| c.0), Some(1001), "{seen:?}");
    assert!(seen.close.as_ref().unwrap().1.contains("shutting down"), "{seen:?}");
    // The session ended with the listener's stop: the drain did not wait it out.
    let log = node.b.log();
    assert!(!log.contains("did not finish in time"), "{log}");
    // The replica runs on for the next daemon; the console's shell is gone.
    let ps = processes(&node, &replica);
    assert!(ps.contains("httpd") && !ps.contains("4545"), "{ps}");
}
