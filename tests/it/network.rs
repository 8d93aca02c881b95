//! Container networks with real containers: runc replicas joined to berth's netns,
//! service names from the generated hosts file, no traffic between projects,
//! addresses kept in SQLite across a daemon restart, and nothing left behind.
//!
//! Traffic goes only to addresses of the containers these tests start. Unknown names
//! are looked up nowhere: the containers have no resolv.conf, so their resolver asks
//! 127.0.0.1 inside their own netns, where nothing listens.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth::runtime::cgroups::Limits;
use berth::runtime::network::{Attachment, NETNS_DIR, NetOptions, Networks};

use crate::harness::{TempDir, require_tool};
use crate::runtime::{Fixture, can_run};

const PORT: u16 = 8080;

/// Whether containers can run and be networked here, through [`crate::harness::require`].
fn can_network() -> bool {
    can_run() && require_tool("ip", &["-V"]) && require_tool("nft", &["--version"])
}

/// Networks with names and a pool of their own, state in a SQLite file. Each
/// [`Net::open`] is a fresh instance over a fresh connection, as after a daemon
/// restart. Drop tears everything down, even when the test fails.
struct Net {
    opts: NetOptions,
    db: PathBuf,
}

impl Net {
    fn new(dir: &Path) -> Net {
        let tag = berth::ids::new_id("t").to_lowercase();
        let tag = &tag[tag.len() - 4..];
        let opts = NetOptions {
            prefix_per_project: 26,
            link_prefix: format!("i{tag}-"),
            netns_prefix: format!("berth-it-{tag}-"),
            nft_table: format!("berth_it_{tag}"),
            ..NetOptions::new(crate::harness::test_pool(24))
        };
        Net { opts, db: dir.join("state.db") }
    }

    fn open(&self) -> Networks {
        let store = berth::store::Store::open(&self.db).unwrap();
        Networks::new(self.opts.clone(), Arc::new(berth::engine::ipam::StoreIpam::new(store))).unwrap()
    }

    /// Links, netns and the nftables table with this instance's names.
    fn leftovers(&self) -> Vec<String> {
        let names = |dir: &str, prefix: &str| -> Vec<String> {
            std::fs::read_dir(dir)
                .map(|rd| rd.flatten().filter_map(|e| e.file_name().into_string().ok()).collect::<Vec<_>>())
                .unwrap_or_default()
                .into_iter()
                .filter(|n| n.starts_with(prefix))
                .collect()
        };
        let mut found = names("/sys/class/net", &self.opts.link_prefix);
        found.extend(names(NETNS_DIR, &self.opts.netns_prefix));
        let table = Command::new("nft")
            .args(["list", "table", "inet", &self.opts.nft_table])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if table.is_ok_and(|s| s.success()) {
            found.push(format!("nft table {}", self.opts.nft_table));
        }
        found
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        if let Err(e) = self.open().teardown_all() {
            eprintln!("network teardown: {e}");
        }
        let left = self.leftovers();
        if !std::thread::panicking() {
            assert!(left.is_empty(), "left behind: {left:?}");
        }
    }
}

/// Writes the project's hosts file where the container will see it.
fn hosts_file(nets: &Networks, project: &str, dir: &Path, id: &str) -> PathBuf {
    let path = dir.join(format!("hosts-{id}"));
    std::fs::write(&path, nets.hosts_file(project).unwrap()).unwrap();
    path
}

/// A replica serving `/www-<name>/index.html` (which says `from-<name>`) on port 8080.
fn serve(f: &Fixture, nets: &Networks, a: &Attachment, name: &str, dir: &Path) {
    let www = f.rootfs.join(format!("www-{name}"));
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), format!("from-{name}")).unwrap();
    let mut spec =
        f.spec(&a.container_id, &format!("exec /bin/busybox httpd -f -p {PORT} -h /www-{name}"), Limits::default());
    spec.netns = Some(a.netns_path.clone());
    spec.hosts_file = Some(hosts_file(nets, &a.project_id, dir, &a.container_id));
    f.rt.create(&f.project, &spec, &[]).unwrap();
    let to = SocketAddr::from((a.address, PORT));
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect_timeout(&to, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "{} is not reachable from the host at {to}", a.container_id);
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a replica that fetches each URL (2 s each at most) and prints
/// `<body> <label>=<exit code>`; returns its stdout once it has exited.
fn client(f: &Fixture, nets: &Networks, a: &Attachment, fetches: &[(&str, String)], dir: &Path) -> String {
    let script: String = fetches
        .iter()
        .map(|(label, url)| format!("busybox timeout 2 busybox wget -q -O- {url}; echo \" {label}=$?\"\n"))
        .collect();
    let mut spec = f.spec(&a.container_id, &script, Limits::default());
    spec.netns = Some(a.netns_path.clone());
    spec.hosts_file = Some(hosts_file(nets, &a.project_id, dir, &a.container_id));
    f.rt.create(&f.project, &spec, &[]).unwrap();
    f.wait_exit(&a.container_id, Duration::from_secs(30));
    let logs = f.rt.logs(&a.container_id, 100);
    logs.iter().filter(|l| l.stream == "stdout").map(|l| l.log.as_str()).collect::<Vec<_>>().join("\n")
}

#[test]
fn replicas_reach_services_by_name_and_never_other_projects() {
    if !can_network() {
        return;
    }
    let dir = TempDir::new("net");
    // Declared before the fixture, so containers are deleted before the networks go.
    let net = Net::new(dir.path());
    let f = Fixture::new();
    let nets = net.open();

    let api = nets.attach("prj_a", "rep_00000000000000000000000a01", "api").unwrap();
    let db = nets.attach("prj_b", "rep_00000000000000000000000b01", "db").unwrap();
    serve(&f, &nets, &api, "api", dir.path());
    serve(&f, &nets, &db, "db", dir.path());

    let web = nets.attach("prj_a", "rep_00000000000000000000000a02", "web").unwrap();
    let out = client(
        &f,
        &nets,
        &web,
        &[
            ("by-name", format!("http://api:{PORT}/")),
            ("by-address", format!("http://{}:{PORT}/", api.address)),
            ("other-project", format!("http://{}:{PORT}/", db.address)),
            ("other-name", format!("http://db:{PORT}/")),
        ],
        dir.path(),
    );
    assert!(out.contains("from-api by-name=0"), "{out}");
    assert!(out.contains("from-api by-address=0"), "{out}");
    assert!(!out.contains("from-db") && !out.contains("other-project=0") && !out.contains("other-name=0"), "{out}");

    // Deleting a container and detaching it leaves no netns, veth or address.
    f.rt.delete(&f.project, &web.container_id).unwrap();
    nets.detach(&web.container_id).unwrap();
    assert!(!web.netns_path.exists());
    assert!(!Path::new("/sys/class/net").join(&web.host_ifname).exists());
    assert!(nets.attachment(&web.container_id).unwrap().is_none());
    let names: Vec<String> = nets.project_hosts("prj_a").unwrap().into_iter().map(|(_, n)| n).collect();
    assert_eq!(names, ["api"]);
}

#[test]
fn addresses_survive_a_daemon_restart_while_replicas_run() {
    if !can_network() {
        return;
    }
    let dir = TempDir::new("netrestart");
    let net = Net::new(dir.path());
    let f = Fixture::new();

    let nets = net.open();
    let api = nets.attach("prj_a", "rep_00000000000000000000000a11", "api").unwrap();
    serve(&f, &nets, &api, "api", dir.path());
    drop(nets);

    // The daemon is back: the replica still runs, IPAM in SQLite still knows it.
    let nets = net.open();
    let rec = nets.recover().unwrap();
    assert_eq!(rec.live, std::slice::from_ref(&api));
    assert!(rec.missing.is_empty() && rec.removed_netns.is_empty() && rec.removed_bridges.is_empty());
    assert_eq!(nets.attach("prj_a", &api.container_id, "api").unwrap(), api);
    TcpStream::connect_timeout(&SocketAddr::from((api.address, PORT)), Duration::from_secs(2))
        .expect("the replica still answers the host");

    // A new replica gets the next address and finds the old one by name.
    let web = nets.attach("prj_a", "rep_00000000000000000000000a12", "web").unwrap();
    assert_ne!(web.address, api.address);
    let out = client(&f, &nets, &web, &[("by-name", format!("http://api:{PORT}/"))], dir.path());
    assert!(out.contains("from-api by-name=0"), "{out}");
}
