//! The runtime end to end: an image pushed with the real Docker CLI is unpacked from
//! berth's registry, runs through the shim on its project's network, answers over
//! HTTP at the replica's address, reaches a sibling by service name, cannot reach
//! another project, and leaves nothing behind when deleted.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth::engine::image::prepare;
use berth::images::snapshots::SnapshotStore;
use berth::registry::blobs::BlobStore;
use berth::runtime::cgroups::Limits;
use berth::runtime::network::ipam::MemIpam;
use berth::runtime::network::{Attachment, NetOptions, Networks};
use berth::runtime::spec::ContainerSpec;

use crate::harness::{Client, TempDir};
use crate::runtime::{Fixture, can_run};
use crate::tools::Dockerd;

/// Networks with names of their own; Drop tears everything down.
struct Nets(Networks);

impl Drop for Nets {
    fn drop(&mut self) {
        let _ = self.0.teardown_all();
    }
}

fn nets(tag: &str) -> Nets {
    let mut opts = NetOptions::new(crate::harness::test_pool(16));
    opts.link_prefix = format!("b{}", &tag[..4]);
    opts.netns_prefix = format!("berth-it-{tag}-");
    opts.nft_table = format!("berth_it_{tag}");
    Nets(Networks::new(opts, Arc::new(MemIpam::new())).unwrap())
}

fn web_image(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy("/bin/busybox", dir.join("busybox")).unwrap();
    std::fs::write(dir.join("index.html"), "hello from berth\n").unwrap();
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nCOPY index.html /www/index.html\n\
         CMD [\"/bin/busybox\", \"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n",
    )
    .unwrap();
}

struct Replica<'a> {
    f: &'a Fixture,
    layers: &'a [PathBuf],
    hosts_dir: &'a Path,
}

impl Replica<'_> {
    fn run(&self, nets: &Networks, project: &str, id: &str, service: &str, args: Vec<String>) -> Attachment {
        let att = nets.attach(project, id, service).unwrap();
        let hosts = self.hosts_dir.join(format!("{id}.hosts"));
        std::fs::write(&hosts, nets.hosts_file(project).unwrap()).unwrap();
        let spec = ContainerSpec {
            id: id.into(),
            hostname: service.into(),
            args,
            env: vec!["PATH=/bin".into()],
            cwd: "/".into(),
            uid: 0,
            gid: 0,
            additional_gids: vec![],
            rootfs: PathBuf::new(),
            hosts_file: Some(hosts),
            resolv_file: None,
            volumes: vec![],
            netns: Some(att.netns_path.clone()),
            limits: Limits { memory_bytes: Some(64 << 20), cpus: Some(1.0), pids: Some(64) },
            cgroups_path: String::new(),
        };
        self.f.rt.create(project, &spec, self.layers).unwrap();
        att
    }
}

#[test]
fn a_pushed_image_serves_http_on_its_project_network_and_projects_are_isolated() {
    if !can_run() {
        return;
    }
    let Some(docker) = Dockerd::start() else { return };
    let (b, pat) = crate::registry::setup("");
    let registry = b.addr.to_string();
    let ctx = TempDir::new("web");
    web_image(ctx.path());
    let reference = format!("{registry}/alpha/web:v1");
    assert!(docker.login(&registry, "admin", pat.token.as_deref().unwrap()).status.success());
    docker.build(ctx.path(), &reference);
    docker.ok(&["push", &reference]);

    // Unpack straight from berth's registry files.
    let manifest = pat.get("/v2/alpha/web/manifests/v1").body;
    let work = TempDir::new("e2e");
    let snapshots = SnapshotStore::new(work.path().join("snapshots"));
    let image = prepare(&BlobStore::new(b.data_dir().join("registry")), &snapshots, manifest).unwrap();
    let args = image.config.command(None).unwrap();
    assert_eq!(args, vec!["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]);

    let f = Fixture::new();
    let tag = berth::ids::new_id("t").to_lowercase();
    let tag = tag[tag.len() - 6..].to_string();
    let n = nets(&tag);
    let r = Replica { f: &f, layers: &image.layers, hosts_dir: work.path() };
    let ids = ["rep_0000000000000000000000e2e1", "rep_0000000000000000000000e2e2", "rep_0000000000000000000000e2e3"];

    // The web replica answers from the host at its address.
    let web = r.run(&n.0, "prj_alpha", ids[0], "web", args.clone());
    let client = Client { addr: SocketAddr::from((web.address, 8080)), token: None };
    let deadline = Instant::now() + Duration::from_secs(20);
    let page = loop {
        if let Ok(resp) = client.try_send("GET", "/index.html", None, &[]) {
            if resp.status == 200 {
                break resp.text();
            }
        }
        assert!(Instant::now() < deadline, "no HTTP answer from {}: {:?}", web.address, f.rt.logs(ids[0], 20));
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(page, "hello from berth\n");

    // A sibling in the same project reaches it by service name. Static busybox
    // cannot use glibc's resolver in a scratch image (NSS needs shared libraries), so
    // the name is looked up the way libc would: in the container's /etc/hosts.
    let fetch = |target: &str| {
        let lookup = if target.parse::<std::net::Ipv4Addr>().is_ok() {
            format!("addr={target}")
        } else {
            format!(
                "addr=$(/bin/busybox awk '$2 == \"{target}\" {{ print $1; exit }}' /etc/hosts); echo \"{target} is $addr\""
            )
        };
        vec![
            "/bin/busybox".to_string(),
            "sh".into(),
            "-c".into(),
            // busybox wget crashes in a bare static rootfs; nc with a plain request does not.
            format!(
                "{lookup}; out=$(printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | /bin/busybox timeout 3 /bin/busybox nc $addr 8080); \
                 case \"$out\" in *'hello from berth'*) echo 'hello from berth'; echo REACHED;; *) echo BLOCKED;; esac"
            ),
        ]
    };
    r.run(&n.0, "prj_alpha", ids[1], "client", fetch("web"));
    let out = wait_logs(&f, ids[1]);
    assert!(out.contains(&"hello from berth".to_string()) && out.contains(&"REACHED".to_string()), "{out:?}");
    assert!(out.contains(&format!("web is {}", web.address)), "the name resolves to the web replica: {out:?}");

    // A replica of another project cannot.
    r.run(&n.0, "prj_beta", ids[2], "intruder", fetch(&web.address.to_string()));
    let out = wait_logs(&f, ids[2]);
    assert!(out.contains(&"BLOCKED".to_string()) && !out.contains(&"hello from berth".to_string()), "{out:?}");

    // Deleting removes the container's mount, cgroup, state, netns and veth.
    for id in ids {
        let project = if id == ids[2] { "prj_beta" } else { "prj_alpha" };
        let rootfs = f.rt.state_dir(id).join("rootfs");
        f.rt.delete(project, id).unwrap();
        n.0.detach(id).unwrap();
        assert!(!berth::runtime::rootfs::is_mounted(&rootfs), "{id}'s rootfs is unmounted");
        assert!(!f.rt.state_dir(id).exists());
        assert!(!Path::new(&n.0.netns_path(id)).exists(), "{id}'s netns is gone");
    }
    assert!(f.cgroup_dirs().iter().all(|d| !ids.iter().any(|id| d.ends_with(id))));
    n.0.teardown_all().unwrap();
    let links = std::process::Command::new("ip").args(["-o", "link"]).output().unwrap();
    let links = String::from_utf8_lossy(&links.stdout).to_string();
    assert!(!links.contains(&format!("b{}", &tag[..4])), "links left: {links}");
    let tables = std::process::Command::new("nft").args(["list", "tables"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&tables.stdout).contains(&format!("berth_it_{tag}")));
}

fn wait_logs(f: &Fixture, id: &str) -> Vec<String> {
    f.wait_exit(id, Duration::from_secs(30));
    f.rt.logs(id, 100).into_iter().map(|l| l.log).collect()
}
