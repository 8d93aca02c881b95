//! Image layers unpacked by `berth::images` and stacked by the kernel's overlayfs,
//! the way containers see them: a whiteout hides a lower file, an opaque directory
//! hides a lower directory's contents, and the result runs.

use std::ffi::CString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use berth::images::{Compression, SnapshotStore};
use berth::oci::{ImageConfig, ImageManifest};
use sha2::{Digest, Sha256};

use crate::harness::{TempDir, require, require_busybox, require_root, require_tool};

const GZIP_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const ZSTD_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// Root, static busybox and overlayfs, through [`crate::harness::require`].
fn can_mount_overlays() -> bool {
    let overlay = std::fs::read_to_string("/proc/filesystems").is_ok_and(|f| f.contains("overlay"));
    require_root() && require("no overlayfs in /proc/filesystems (modprobe overlay)", overlay) && require_busybox()
}

/// An overlay mount, detached on drop (before its temp dir is removed).
struct Overlay(PathBuf);

impl Overlay {
    fn mount(lower: &[&Path], upper: &Path, work: &Path, target: &Path) -> Overlay {
        let lowers: Vec<String> = lower.iter().map(|p| p.display().to_string()).collect();
        let data = format!("lowerdir={},upperdir={},workdir={}", lowers.join(":"), upper.display(), work.display());
        let data = CString::new(data).unwrap();
        let t = CString::new(target.as_os_str().as_bytes()).unwrap();
        // SAFETY: every pointer is a valid C string that outlives the call.
        let r = unsafe { libc::mount(c"overlay".as_ptr(), t.as_ptr(), c"overlay".as_ptr(), 0, data.as_ptr().cast()) };
        assert_eq!(r, 0, "mount overlay: {}", std::io::Error::last_os_error());
        Overlay(target.to_path_buf())
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let t = CString::new(self.0.as_os_str().as_bytes()).unwrap();
        // SAFETY: `t` is a valid C string; MNT_DETACH never blocks on busy files.
        unsafe { libc::umount2(t.as_ptr(), libc::MNT_DETACH) };
    }
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

fn dir(b: &mut tar::Builder<Vec<u8>>, path: &str) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o755);
    h.set_mtime(1_700_000_000);
    h.set_size(0);
    b.append_data(&mut h, path, &[][..]).unwrap();
}

fn file(b: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(mode);
    h.set_mtime(1_700_000_000);
    h.set_size(data.len() as u64);
    b.append_data(&mut h, path, data).unwrap();
}

fn symlink(b: &mut tar::Builder<Vec<u8>>, path: &str, target: &str) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_mode(0o777);
    h.set_size(0);
    b.append_link(&mut h, path, target).unwrap();
}

/// A blob on disk with its (compressed) digest and diff_id.
struct Layer {
    path: PathBuf,
    digest: String,
    diff_id: String,
    media_type: &'static str,
}

fn write_layer(dir: &Path, tar: Vec<u8>, compression: Compression) -> Layer {
    let (blob, media_type) = match compression {
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(&tar).unwrap();
            (e.finish().unwrap(), GZIP_LAYER)
        }
        Compression::Zstd => (zstd::stream::encode_all(&tar[..], 3).unwrap(), ZSTD_LAYER),
        Compression::None => (tar.clone(), "application/vnd.oci.image.layer.v1.tar"),
    };
    let digest = sha256(&blob);
    let path = dir.join(digest.replace(':', "-"));
    std::fs::write(&path, &blob).unwrap();
    Layer { path, digest, diff_id: sha256(&tar), media_type }
}

#[test]
fn overlay_of_unpacked_layers_honours_whiteouts_and_opaque_dirs() {
    if !can_mount_overlays() {
        return;
    }
    let tmp = TempDir::new("images");
    let blobs = tmp.path().join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();

    // Layer 1: a busybox userland plus files the next layer deletes.
    let busybox = std::fs::read("/bin/busybox").unwrap();
    let mut b = tar::Builder::new(Vec::new());
    for d in ["bin/", "etc/", "data/", "data/old/", "proc/", "sys/", "dev/", "tmp/"] {
        dir(&mut b, d);
    }
    file(&mut b, "bin/busybox", 0o755, &busybox);
    symlink(&mut b, "bin/sh", "busybox");
    file(&mut b, "etc/hello", 0o644, b"deleted by layer 2\n");
    file(&mut b, "etc/keep", 0o644, b"still here\n");
    file(&mut b, "data/old/file", 0o644, b"hidden by the opaque dir\n");
    file(&mut b, "data/old2", 0o644, b"hidden too\n");
    let l1 = write_layer(&blobs, b.into_inner().unwrap(), Compression::Gzip);

    // Layer 2: delete etc/hello, replace data/ wholesale.
    let mut b = tar::Builder::new(Vec::new());
    dir(&mut b, "etc/");
    file(&mut b, "etc/.wh.hello", 0o644, b"");
    dir(&mut b, "data/");
    file(&mut b, "data/.wh..wh..opq", 0o644, b"");
    file(&mut b, "data/new", 0o644, b"from layer 2\n");
    let l2 = write_layer(&blobs, b.into_inner().unwrap(), Compression::Zstd);

    // The image's manifest and config, read back through berth's parsers.
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [l1.diff_id, l2.diff_id]},
    });
    let config_bytes = serde_json::to_vec(&config).unwrap();
    let layer_json = |l: &Layer| serde_json::json!({"mediaType": l.media_type, "digest": l.digest, "size": std::fs::metadata(&l.path).unwrap().len()});
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(&config_bytes), "size": config_bytes.len()},
        "layers": [layer_json(&l1), layer_json(&l2)],
    });
    let manifest = ImageManifest::parse(&serde_json::to_vec(&manifest).unwrap()).unwrap();
    let config = ImageConfig::parse(&config_bytes).unwrap();
    assert_eq!(config.command(None).unwrap(), ["/bin/sh"]);

    let store = SnapshotStore::new(tmp.path().join("images/snapshots"));
    let mut snapshots = Vec::new();
    for (layer, diff_id) in manifest.layers_with_diff_ids(&config).unwrap() {
        let blob = [&l1, &l2].into_iter().find(|l| l.digest == layer.digest.to_string()).unwrap();
        let path = store
            .ensure(&layer.digest.to_string(), &layer.media_type, Some(&diff_id.to_string()), || {
                std::fs::File::open(&blob.path)
            })
            .unwrap();
        snapshots.push(path);
    }
    assert_eq!(store.list().unwrap().len(), 2);

    let (upper, work, merged) = (tmp.path().join("upper"), tmp.path().join("work"), tmp.path().join("merged"));
    for d in [&upper, &work, &merged] {
        std::fs::create_dir_all(d).unwrap();
    }
    // overlayfs lists the top layer first.
    let _mount = Overlay::mount(&[&snapshots[1], &snapshots[0]], &upper, &work, &merged);

    assert!(!merged.join("etc/hello").exists(), "the whiteout did not hide etc/hello");
    assert_eq!(std::fs::read(merged.join("etc/keep")).unwrap(), b"still here\n");
    let mut data: Vec<String> = std::fs::read_dir(merged.join("data"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    data.sort();
    assert_eq!(data, ["new"], "the opaque dir let layer 1's data/ show through");
    assert_eq!(std::fs::read(merged.join("bin/busybox")).unwrap().len(), busybox.len());

    // The merged tree is a working userland.
    if require_tool("chroot", &["--version"]) {
        let out = Command::new("chroot")
            .arg(&merged)
            .args([
                "/bin/sh",
                "-c",
                "set -e; busybox cat /etc/keep /data/new; busybox ls /etc; test ! -e /data/old2 && echo gone",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "still here\nfrom layer 2\nkeep\ngone\n");
    }
    // The lower layers were not written through the mount.
    assert!(snapshots[0].join("etc/hello").is_file());
    assert!(std::fs::read_dir(&upper).unwrap().next().is_none());
}
