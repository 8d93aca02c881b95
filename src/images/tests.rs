//! Unpacking tests: hostile layers are refused with nothing touched outside the
//! snapshot; ordinary layers round-trip; snapshots are made once per digest.
//!
//! Archives are built byte by byte so names `tar::Builder` would refuse (`..`,
//! absolute paths, device entries) can be written.

use std::collections::{BTreeMap, HashSet};
use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};

use sha2::{Digest as _, Sha256};
use tar::{EntryType, Header};

use super::*;

// ---------------------------------------------------------------- fixtures

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// `<tmp>/berth-images-…/` with `layers/root/` (the snapshot) and
/// `outside/sentinel`, so `../../outside/sentinel` from the root is the sentinel;
/// removed on drop, even when the test fails.
struct Scratch {
    dir: PathBuf,
}

const SENTINEL: &[u8] = b"do not touch\n";

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "berth-images-{tag}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("layers/root")).unwrap();
        std::fs::create_dir_all(dir.join("outside")).unwrap();
        std::fs::write(dir.join("outside/sentinel"), SENTINEL).unwrap();
        Scratch { dir }
    }

    fn root(&self) -> PathBuf {
        self.dir.join("layers/root")
    }

    fn outside(&self) -> PathBuf {
        self.dir.join("outside")
    }

    /// Every path outside `root/`, with its size and mtime, for before/after checks.
    fn outside_state(&self) -> BTreeMap<PathBuf, (u64, i64, i64)> {
        let mut out = BTreeMap::new();
        let mut stack = vec![self.dir.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p == self.root() {
                    continue;
                }
                let m = std::fs::symlink_metadata(&p).unwrap();
                out.insert(p.clone(), (m.len(), m.mtime(), m.mtime_nsec()));
                if m.is_dir() {
                    stack.push(p);
                }
            }
        }
        out
    }

    /// Unpacks `tar` into `root/` and checks nothing outside changed.
    fn unpack_checked(&self, tar: &[u8], limits: &Limits) -> Result<UnpackStats, ImageError> {
        let before = self.outside_state();
        let r = unpack_layer(tar, &self.root(), limits);
        assert_eq!(self.outside_state(), before, "something outside the snapshot changed");
        assert_eq!(std::fs::read(self.outside().join("sentinel")).unwrap(), SENTINEL);
        r
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn is_root() -> bool {
    let root = rustix::process::geteuid().is_root();
    if !root {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "image unpack tests need root under CI");
        eprintln!("skipping: needs root (mknod, chown, trusted.* xattrs)");
    }
    root
}

/// A tar stream assembled header by header.
#[derive(Default)]
struct Tar {
    bytes: Vec<u8>,
}

const MTIME: u64 = 1_600_000_000;

fn header(name: &[u8], kind: EntryType, size: u64) -> Header {
    let mut h = Header::new_gnu();
    let old = h.as_old_mut();
    assert!(name.len() <= old.name.len(), "use a long-name entry");
    old.name[..name.len()].copy_from_slice(name);
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(if kind == EntryType::Directory { 0o755 } else { 0o644 });
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(MTIME);
    h
}

fn with_link(mut h: Header, target: &[u8]) -> Header {
    let old = h.as_old_mut();
    old.linkname[..target.len()].copy_from_slice(target);
    h
}

/// One PAX record, `"<len> key=value\n"`, where `len` counts itself.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3;
    let mut len = body + body.to_string().len();
    if len.to_string().len() != body.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut r = format!("{len} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

impl Tar {
    fn raw(mut self, mut h: Header, data: &[u8]) -> Self {
        h.set_cksum();
        self.bytes.extend_from_slice(h.as_bytes());
        self.bytes.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.bytes.extend(std::iter::repeat_n(0u8, pad));
        self
    }
    fn file(self, name: &str, data: &[u8]) -> Self {
        self.raw(header(name.as_bytes(), EntryType::Regular, data.len() as u64), data)
    }
    fn dir(self, name: &str) -> Self {
        self.raw(header(name.as_bytes(), EntryType::Directory, 0), b"")
    }
    fn symlink(self, name: &str, target: &str) -> Self {
        self.raw(with_link(header(name.as_bytes(), EntryType::Symlink, 0), target.as_bytes()), b"")
    }
    fn hardlink(self, name: &str, target: &str) -> Self {
        self.raw(with_link(header(name.as_bytes(), EntryType::Link, 0), target.as_bytes()), b"")
    }
    fn pax(self, records: &[(&str, &[u8])]) -> Self {
        let data: Vec<u8> = records.iter().flat_map(|(k, v)| pax_record(k, v)).collect();
        self.raw(header(b"PaxHeaders/x", EntryType::XHeader, data.len() as u64), &data)
    }
    fn long_name(self, name: &str) -> Self {
        let mut data = name.as_bytes().to_vec();
        data.push(0);
        self.raw(header(b"././@LongLink", EntryType::GNULongName, data.len() as u64), &data)
    }
    fn finish(mut self) -> Vec<u8> {
        self.bytes.extend_from_slice(&[0u8; 1024]);
        self.bytes
    }
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn zstd(bytes: &[u8]) -> Vec<u8> {
    zstd::stream::encode_all(bytes, 3).unwrap()
}

fn small_limits() -> Limits {
    Limits { max_entries: 10_000, max_total_bytes: 1 << 20, max_entry_bytes: 1 << 20, build_context: false }
}

fn getxattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = [0u8; 256];
    let len = rustix::fs::lgetxattr(path, name, &mut buf[..]).ok()?;
    Some(buf[..len].to_vec())
}

fn lstat(p: &Path) -> std::fs::Metadata {
    std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

// ---------------------------------------------------------------- hostile layers

#[test]
fn dotdot_names_are_refused() {
    let s = Scratch::new("dotdot");
    for name in ["../../outside/sentinel", "../outside/sentinel", "a/../../outside/sentinel", "a/b/../c"] {
        let tar = Tar::default().file(name, b"pwned").finish();
        let e = s.unpack_checked(&tar, &small_limits()).unwrap_err();
        assert!(matches!(e, ImageError::UnsafePath { ref entry, .. } if entry == name), "{name}: {e}");
        assert!(e.to_string().contains("\"..\""), "{e}");
    }
}

#[test]
fn absolute_names_stay_inside_the_root() {
    let s = Scratch::new("abs");
    let abs = s.outside().join("sentinel");
    let tar = Tar::default().file(abs.to_str().unwrap(), b"contained").finish();
    s.unpack_checked(&tar, &small_limits()).unwrap();
    // The leading "/" is dropped: the entry lands under the snapshot root.
    let inside = s.root().join(abs.strip_prefix("/").unwrap());
    assert_eq!(std::fs::read(inside).unwrap(), b"contained");

    let tar = Tar::default().file("/../outside/sentinel", b"pwned").finish();
    let e = s.unpack_checked(&tar, &small_limits()).unwrap_err();
    assert!(matches!(e, ImageError::UnsafePath { .. }), "{e}");
}

#[test]
fn writes_through_a_planted_symlink_are_refused() {
    let s = Scratch::new("symparent");
    let abs_outside = s.outside();
    let cases = [
        ("evil", "../../outside".to_string(), "evil/sentinel"),
        ("evil", abs_outside.to_str().unwrap().to_string(), "evil/x"),
        ("deep", "../../outside".to_string(), "deep/sub/x"),
    ];
    for (link, target, through) in cases {
        let root = s.root();
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir(&root).unwrap();
        let tar = Tar::default().symlink(link, &target).file(through, b"pwned").finish();
        let e = s.unpack_checked(&tar, &small_limits()).unwrap_err();
        match &e {
            ImageError::UnsafePath { entry, reason } => {
                assert_eq!(entry, through);
                assert!(reason.contains("symlink"), "{e}");
            }
            other => panic!("{through}: {other}"),
        }
        assert!(!s.outside().join("x").exists());
        // The symlink itself is fine: it is only ever read inside the container.
        assert!(lstat(&root.join(link)).file_type().is_symlink());
    }
    // Also when a directory entry would go through it, and for a hardlink target.
    let tar = Tar::default().symlink("evil2", "../../outside").dir("evil2/sub/").finish();
    assert!(matches!(s.unpack_checked(&tar, &small_limits()), Err(ImageError::UnsafePath { .. })));
    let tar = Tar::default().symlink("evil3", "../../outside").hardlink("h", "evil3/sentinel").finish();
    assert!(matches!(s.unpack_checked(&tar, &small_limits()), Err(ImageError::BadHardlink { .. })));
}

#[test]
fn a_later_entry_replaces_a_symlink_instead_of_writing_through_it() {
    if !is_root() {
        return;
    }
    let s = Scratch::new("replace");
    let target = s.outside().join("sentinel");
    let tar = Tar::default().symlink("f", target.to_str().unwrap()).file("f", b"new").finish();
    s.unpack_checked(&tar, &small_limits()).unwrap();
    assert_eq!(std::fs::read(s.root().join("f")).unwrap(), b"new");
    assert!(lstat(&s.root().join("f")).file_type().is_file());
}

#[test]
fn hardlinks_out_of_the_root_are_refused() {
    let s = Scratch::new("hardlink");
    let abs = s.outside().join("sentinel");
    for (target, why) in [
        ("../outside/sentinel", "leaves the snapshot"),
        ("../../outside/sentinel", "leaves the snapshot"),
        (abs.to_str().unwrap(), "does not exist in this layer"),
        ("/nonexistent/berth-test/target", "does not exist in this layer"),
        ("missing", "does not exist in this layer"),
    ] {
        let tar = Tar::default().hardlink("h", target).finish();
        let e = s.unpack_checked(&tar, &small_limits()).unwrap_err();
        match &e {
            ImageError::BadHardlink { entry, reason, .. } => {
                assert_eq!(entry, "h");
                assert_eq!(*reason, why, "{target}: {e}");
            }
            other => panic!("{target}: {other}"),
        }
        assert_eq!(lstat(&abs).nlink(), 1, "the sentinel gained a link");
    }
    // A hardlink to a directory inside the root is refused too.
    let tar = Tar::default().dir("d/").hardlink("h", "d").finish();
    assert!(matches!(
        s.unpack_checked(&tar, &small_limits()),
        Err(ImageError::BadHardlink { reason: "is not a regular file", .. })
    ));
}

#[test]
fn device_nodes_and_fifos_are_refused() {
    let s = Scratch::new("dev");
    for (kind, what) in
        [(EntryType::Char, "character device"), (EntryType::Block, "block device"), (EntryType::Fifo, "fifo")]
    {
        let mut h = header(b"dev/node", kind, 0);
        h.set_device_major(8).unwrap();
        h.set_device_minor(0).unwrap();
        let tar = Tar::default().raw(h, b"").finish();
        let e = s.unpack_checked(&tar, &small_limits()).unwrap_err();
        assert!(matches!(e, ImageError::ForbiddenEntry { kind, .. } if kind == what), "{e}");
        assert!(!s.root().join("dev/node").exists());
    }
    // A char device 0/0 from the archive is not a way to smuggle in a whiteout.
    let tar = Tar::default().raw(header(b"etc", EntryType::Char, 0), b"").finish();
    assert!(matches!(s.unpack_checked(&tar, &small_limits()), Err(ImageError::ForbiddenEntry { .. })));
}

#[test]
fn too_many_entries_are_refused() {
    if !is_root() {
        return;
    }
    let s = Scratch::new("many");
    let mut tar = Tar::default();
    for i in 0..10_001 {
        tar = tar.file(&format!("f{i}"), b"");
    }
    let tar = tar.finish();
    let e = s.unpack_checked(&tar, &small_limits()).unwrap_err();
    assert!(matches!(e, ImageError::TooManyEntries { limit: 10_000 }), "{e}");
    assert_eq!(std::fs::read_dir(s.root()).unwrap().count(), 10_000);
}

/// A million-entry archive produced lazily: the same directory entry over and over.
struct ManyEntries {
    left: u64,
    block: [u8; 512],
    pos: usize,
}

impl Read for ManyEntries {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos == 512 {
            if self.left == 0 {
                return Ok(0);
            }
            self.left -= 1;
            self.pos = 0;
        }
        let n = out.len().min(512 - self.pos);
        out[..n].copy_from_slice(&self.block[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[test]
fn default_limits_stop_a_million_entries() {
    if !is_root() {
        return;
    }
    assert!(Limits::default().max_entries < 1_000_000);
    let s = Scratch::new("million");
    let mut h = header(b"d/", EntryType::Directory, 0);
    h.set_cksum();
    let src = ManyEntries { left: 1_000_001, block: *h.as_bytes(), pos: 512 };
    let e = unpack_layer(src, &s.root(), &Limits::default()).unwrap_err();
    assert!(matches!(e, ImageError::TooManyEntries { limit: Limits::DEFAULT_MAX_ENTRIES }), "{e}");
}

#[test]
fn huge_size_claims_are_refused_before_writing() {
    let s = Scratch::new("huge");
    const TEN_GB: u64 = 10 << 30;
    // A regular file claiming 10 GB, followed by no data at all.
    let mut tar = Tar::default().raw(header(b"big", EntryType::Regular, TEN_GB), b"").bytes;
    tar.extend_from_slice(&[0u8; 1024]);
    let e = s.unpack_checked(&tar, &Limits::default()).unwrap_err();
    assert!(matches!(e, ImageError::EntryTooLarge { size: TEN_GB, .. }), "{e}");
    assert!(!s.root().join("big").exists());

    // A GNU sparse file whose real size is 10 GB.
    let mut h = header(b"sparse", EntryType::GNUSparse, 512);
    let gnu = h.as_gnu_mut().unwrap();
    gnu.set_real_size(TEN_GB);
    gnu.sparse[0].set_offset(TEN_GB - 512);
    gnu.sparse[0].set_length(512);
    let tar = Tar::default().raw(h, &[7u8; 512]).finish();
    let e = s.unpack_checked(&tar, &Limits::default()).unwrap_err();
    assert!(matches!(e, ImageError::Unsupported { ref entry, .. } if entry == "sparse"), "{e}");
    assert!(!s.root().join("sparse").exists());

    // A PAX sparse file (format 1.0) is refused the same way.
    let tar = Tar::default()
        .pax(&[("GNU.sparse.major", b"1"), ("GNU.sparse.minor", b"0"), ("GNU.sparse.realsize", b"10737418240")])
        .file("GNUSparseFile.0/sparse", b"")
        .finish();
    assert!(matches!(s.unpack_checked(&tar, &Limits::default()), Err(ImageError::Unsupported { .. })));

    // The layer total is capped as well as each entry.
    let limits = Limits { max_entries: 100, max_total_bytes: 1000, max_entry_bytes: 600, build_context: false };
    let tar = Tar::default().file("a", &[1u8; 600]).file("b", &[2u8; 600]).finish();
    let e = s.unpack_checked(&tar, &limits).unwrap_err();
    assert!(matches!(e, ImageError::LayerTooLarge { ref entry, total: 1200, limit: 1000 } if entry == "b"), "{e}");
    assert!(!s.root().join("b").exists());
}

#[test]
fn a_dotdot_directory_entry_is_refused() {
    let s = Scratch::new("dotdotdir");
    for name in ["..", "../", "./..", "../../outside/newdir/"] {
        let tar = Tar::default().dir(name).finish();
        let e = s.unpack_checked(&tar, &small_limits()).unwrap_err();
        assert!(matches!(e, ImageError::UnsafePath { .. }), "{name}: {e}");
    }
    assert!(!s.outside().join("newdir").exists());
}

#[test]
fn oversized_extension_headers_are_refused_without_reading_them() {
    let s = Scratch::new("ext");
    // A long-name member claiming 8 GB would otherwise be read into memory whole.
    for kind in [EntryType::GNULongName, EntryType::XHeader, EntryType::XGlobalHeader] {
        let mut tar = Tar::default().raw(header(b"././@LongLink", kind, 8 << 30), b"").bytes;
        tar.extend_from_slice(&[0u8; 1024]);
        let e = s.unpack_checked(&tar, &small_limits()).unwrap_err();
        assert!(matches!(e, ImageError::Malformed { ref reason } if reason.contains("cap")), "{e}");
    }
    // Two long names for one member is ambiguous.
    let tar = Tar::default().long_name("a").long_name("b").file("c", b"").finish();
    assert!(matches!(s.unpack_checked(&tar, &small_limits()), Err(ImageError::Malformed { .. })));
    // A PAX size that disagrees with the header is a parser-confusion attempt.
    let tar = Tar::default().pax(&[("size", b"4")]).file("a", b"12345678").finish();
    assert!(matches!(s.unpack_checked(&tar, &small_limits()), Err(ImageError::Malformed { .. })));
    let tar = Tar::default().pax(&[("path", b"../../outside/sentinel")]).file("innocent", b"pwned").finish();
    assert!(matches!(s.unpack_checked(&tar, &small_limits()), Err(ImageError::UnsafePath { .. })));
}

#[test]
fn garbage_and_trailing_data_are_refused() {
    let s = Scratch::new("garbage");
    let e = s.unpack_checked(&[0x42u8; 4096], &small_limits()).unwrap_err();
    assert!(matches!(e, ImageError::Malformed { .. }), "{e}");
    let good = Tar::default().file("a", b"hello").finish();
    let gz = gzip(&good);
    let e = s.unpack_checked(&gz[..gz.len() / 2], &small_limits()).unwrap_err();
    assert!(matches!(e, ImageError::Malformed { .. }), "{e}");
    let mut zs = zstd(&good);
    let last = zs.len() - 1;
    zs[last] ^= 0xff;
    zs.truncate(last - 4);
    assert!(s.unpack_checked(&zs, &small_limits()).is_err());
    // Entries hidden after the end-of-archive marker.
    let mut smuggled = good.clone();
    smuggled.extend_from_slice(&Tar::default().file("hidden", b"x").finish());
    let e = s.unpack_checked(&smuggled, &small_limits()).unwrap_err();
    assert!(matches!(e, ImageError::Malformed { ref reason } if reason.contains("end-of-archive")), "{e}");
    // Record padding after the marker is fine.
    let mut padded = good.clone();
    padded.extend_from_slice(&[0u8; 8192]);
    s.unpack_checked(&padded, &small_limits()).unwrap();
}

#[test]
fn a_file_cannot_become_a_parent() {
    let s = Scratch::new("fileparent");
    let tar = Tar::default().file("a", b"x").file("a/b", b"y").finish();
    let e = s.unpack_checked(&tar, &small_limits()).unwrap_err();
    assert!(matches!(e, ImageError::UnsafePath { ref reason, .. } if reason.contains("regular file")), "{e}");
}

// ---------------------------------------------------------------- ordinary layers

fn sample_layer() -> Vec<u8> {
    let mut setuid = header(b"usr/bin/su", EntryType::Regular, 3);
    setuid.set_mode(0o4755);
    let mut owned = header(b"home/user/notes", EntryType::Regular, 5);
    owned.set_uid(1000);
    owned.set_gid(1001);
    owned.set_mode(0o600);
    owned.set_mtime(1_234_567_890);
    let mut ro_dir = header(b"ro/", EntryType::Directory, 0);
    ro_dir.set_mode(0o555);
    ro_dir.set_mtime(1_111_111_111);
    let mut user_dir = header(b"home/user/", EntryType::Directory, 0);
    user_dir.set_uid(1000);
    user_dir.set_gid(1001);
    user_dir.set_mode(0o750);
    let mut link = with_link(header(b"usr/bin/link", EntryType::Symlink, 0), b"su");
    link.set_uid(1000);
    link.set_mtime(1_222_222_222);
    Tar::default()
        .dir("./")
        .dir("usr/")
        .dir("usr/bin/")
        .raw(setuid, b"bin")
        .raw(user_dir, b"")
        .raw(owned, b"hello")
        .raw(ro_dir, b"")
        .file("ro/inside", b"written before the dir became read-only")
        .raw(link, b"")
        .symlink("etc/abs", "/nonexistent/berth-test/abs")
        .symlink("dangling", "does/not/exist")
        .symlink("up", "../../../../nonexistent/berth-test/up")
        .hardlink("usr/bin/su-again", "usr/bin/su")
        .hardlink("/usr/bin/su-abs", "/usr/bin/su")
        .file("implicit/parents/file", b"p")
        .long_name(&format!("long/{}/name", "x".repeat(150)))
        .file("ignored-short-name", b"long")
        .pax(&[
            ("path", format!("pax/{}", "y".repeat(200)).as_bytes()),
            ("mtime", b"1500000000.25"),
            ("uid", b"3000000"),
            ("SCHILY.xattr.user.note", b"kept"),
            ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
        ])
        .file("short", b"pax")
        .file("replaced", b"first")
        .file("replaced", b"second")
        .finish()
}

#[test]
fn an_ordinary_layer_round_trips() {
    if !is_root() {
        return;
    }
    let s = Scratch::new("roundtrip");
    let tar = sample_layer();
    let stats = s.unpack_checked(&tar, &Limits::default()).unwrap();
    assert_eq!(stats.diff_id, sha256(&tar));
    assert_eq!(stats.compression, Compression::None);
    let r = s.root();

    let su = lstat(&r.join("usr/bin/su"));
    assert_eq!(su.permissions().mode() & 0o7777, 0o4755);
    assert_eq!(std::fs::read(r.join("usr/bin/su")).unwrap(), b"bin");
    assert_eq!(su.mtime(), MTIME as i64);
    assert_eq!(su.nlink(), 3);
    assert_eq!(lstat(&r.join("usr/bin/su-again")).ino(), su.ino());
    assert_eq!(lstat(&r.join("usr/bin/su-abs")).ino(), su.ino());

    let notes = lstat(&r.join("home/user/notes"));
    assert_eq!((notes.uid(), notes.gid(), notes.mode() & 0o7777), (1000, 1001, 0o600));
    assert_eq!(notes.mtime(), 1_234_567_890);
    let user = lstat(&r.join("home/user"));
    assert_eq!((user.uid(), user.gid(), user.mode() & 0o7777), (1000, 1001, 0o750));
    assert_eq!(user.mtime(), MTIME as i64);
    assert_eq!(lstat(&r.join("home")).mode() & 0o7777, 0o755);

    let ro = lstat(&r.join("ro"));
    assert_eq!(ro.mode() & 0o7777, 0o555);
    assert_eq!(ro.mtime(), 1_111_111_111);
    assert!(r.join("ro/inside").is_file());

    let link = lstat(&r.join("usr/bin/link"));
    assert!(link.file_type().is_symlink());
    assert_eq!((link.uid(), link.mtime()), (1000, 1_222_222_222));
    assert_eq!(std::fs::read_link(r.join("usr/bin/link")).unwrap(), Path::new("su"));
    assert_eq!(std::fs::read_link(r.join("etc/abs")).unwrap(), Path::new("/nonexistent/berth-test/abs"));
    assert_eq!(std::fs::read_link(r.join("dangling")).unwrap(), Path::new("does/not/exist"));
    assert_eq!(std::fs::read_link(r.join("up")).unwrap(), Path::new("../../../../nonexistent/berth-test/up"));

    assert_eq!(std::fs::read(r.join("implicit/parents/file")).unwrap(), b"p");
    assert_eq!(lstat(&r.join("implicit/parents")).mode() & 0o7777, 0o755);

    let long = r.join(format!("long/{}/name", "x".repeat(150)));
    assert_eq!(std::fs::read(&long).unwrap(), b"long");
    assert!(!r.join("ignored-short-name").exists());
    let pax = r.join(format!("pax/{}", "y".repeat(200)));
    assert_eq!(std::fs::read(&pax).unwrap(), b"pax");
    let pm = lstat(&pax);
    assert_eq!((pm.mtime(), pm.mtime_nsec(), pm.uid()), (1_500_000_000, 250_000_000, 3_000_000));
    assert_eq!(getxattr(&pax, "user.note").as_deref(), Some(&b"kept"[..]));
    assert_eq!(getxattr(&pax, "trusted.overlay.opaque"), None, "trusted.* from an archive must be dropped");
    assert_eq!(std::fs::read(r.join("replaced")).unwrap(), b"second");
    assert_eq!(stats.entries, 19);
}

#[test]
fn blank_numeric_fields_read_as_zero() {
    if !is_root() {
        return;
    }
    let s = Scratch::new("blank");
    let mut h = Header::new_gnu();
    h.as_old_mut().name[..4].copy_from_slice(b"file");
    h.set_entry_type(EntryType::Regular);
    h.set_size(2);
    let tar = Tar::default().raw(h, b"hi").finish();
    s.unpack_checked(&tar, &small_limits()).unwrap();
    let m = lstat(&s.root().join("file"));
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777, m.mtime()), (0, 0, 0, 0));
    let mut h = header(b"bad", EntryType::Regular, 0);
    h.as_old_mut().uid.copy_from_slice(b"12x4567\0");
    let tar = Tar::default().raw(h, b"").finish();
    assert!(matches!(s.unpack_checked(&tar, &small_limits()), Err(ImageError::Malformed { .. })));
}

#[test]
fn whiteouts_and_opaque_dirs_become_overlayfs_form() {
    if !is_root() {
        return;
    }
    let s = Scratch::new("whiteout");
    let tar = Tar::default()
        .dir("etc/")
        .file("etc/.wh.passwd", b"")
        .file("gone/deeper/.wh.x", b"")
        .dir("var/")
        .file("var/.wh..wh..opq", b"")
        .file("var/new", b"n")
        .file(".wh..wh..plnk", b"")
        // Same layer: a directory listed before its whiteout becomes opaque.
        .dir("kept/")
        .file("kept/mine", b"m")
        .file(".wh.kept", b"")
        // A whiteout followed by a directory of the same name: opaque directory.
        .file(".wh.redo", b"")
        .dir("redo/")
        // A whiteout followed by a file of the same name: the file.
        .file(".wh.f", b"")
        .file("f", b"f")
        .finish();
    s.unpack_checked(&tar, &small_limits()).unwrap();
    let r = s.root();
    for w in ["etc/passwd", "gone/deeper/x"] {
        let m = lstat(&r.join(w));
        assert!(m.file_type().is_char_device(), "{w}");
        assert_eq!(m.rdev(), 0, "{w}");
    }
    assert!(!r.join("etc/.wh.passwd").exists());
    assert_eq!(getxattr(&r.join("var"), "trusted.overlay.opaque").as_deref(), Some(&b"y"[..]));
    assert!(!r.join("var/.wh..wh..opq").exists());
    assert_eq!(std::fs::read(r.join("var/new")).unwrap(), b"n");
    assert!(!r.join(".wh..wh..plnk").exists());
    assert_eq!(getxattr(&r.join("kept"), "trusted.overlay.opaque").as_deref(), Some(&b"y"[..]));
    assert!(r.join("kept/mine").is_file());
    assert_eq!(getxattr(&r.join("redo"), "trusted.overlay.opaque").as_deref(), Some(&b"y"[..]));
    assert!(lstat(&r.join("f")).is_file());
    assert_eq!(getxattr(&r.join("etc"), "trusted.overlay.opaque"), None);

    let bad = Tar::default().file("a/.wh.", b"").finish();
    assert!(matches!(s.unpack_checked(&bad, &small_limits()), Err(ImageError::UnsafePath { .. })));
}

/// Everything about a tree that unpacking decides, for comparisons.
fn tree(root: &Path) -> BTreeMap<PathBuf, (u32, u32, u32, i64, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = lstat(&p);
            let content = if m.is_file() {
                std::fs::read(&p).unwrap()
            } else if m.file_type().is_symlink() {
                std::fs::read_link(&p).unwrap().as_os_str().as_bytes().to_vec()
            } else {
                Vec::new()
            };
            // Directories the archive did not list get the current time.
            let mtime = if m.is_dir() { 0 } else { m.mtime() };
            if m.is_dir() {
                stack.push(p.clone());
            }
            out.insert(p.strip_prefix(root).unwrap().to_path_buf(), (m.mode(), m.uid(), m.gid(), mtime, content));
        }
    }
    out
}

#[test]
fn gzip_zstd_and_plain_unpack_identically() {
    if !is_root() {
        return;
    }
    let tar = sample_layer();
    let mut trees = Vec::new();
    for (blob, kind) in
        [(tar.clone(), Compression::None), (gzip(&tar), Compression::Gzip), (zstd(&tar), Compression::Zstd)]
    {
        let s = Scratch::new("codec");
        let stats = s.unpack_checked(&blob, &Limits::default()).unwrap();
        assert_eq!(stats.compression, kind);
        assert_eq!(stats.diff_id, sha256(&tar), "{kind:?}");
        trees.push(tree(&s.root()));
    }
    assert!(!trees[0].is_empty());
    assert_eq!(trees[0], trees[1]);
    assert_eq!(trees[0], trees[2]);

    // Concatenated gzip members are one stream.
    let half = tar.len() / 2;
    let mut multi = gzip(&tar[..half]);
    multi.extend(gzip(&tar[half..]));
    let s = Scratch::new("multigz");
    assert_eq!(s.unpack_checked(&multi, &Limits::default()).unwrap().diff_id, sha256(&tar));
}

/// A reader that hands out one byte per call, like a slow pipe.
struct Trickle<'a>(&'a [u8]);

impl Read for Trickle<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let Some((first, rest)) = self.0.split_first() else { return Ok(0) };
        match out.first_mut() {
            Some(o) => *o = *first,
            None => return Ok(0),
        }
        self.0 = rest;
        Ok(1)
    }
}

#[test]
fn short_reads_do_not_confuse_the_sniffer() {
    if !is_root() {
        return;
    }
    let tar = Tar::default().file("a", b"trickled").finish();
    for (blob, kind) in
        [(gzip(&tar), Compression::Gzip), (zstd(&tar), Compression::Zstd), (tar.clone(), Compression::None)]
    {
        let s = Scratch::new("trickle");
        let stats = unpack_layer(Trickle(&blob), &s.root(), &small_limits()).unwrap();
        assert_eq!((stats.compression, stats.diff_id.as_str()), (kind, sha256(&tar).as_str()));
        assert_eq!(std::fs::read(s.root().join("a")).unwrap(), b"trickled");
    }
    let s = Scratch::new("empty");
    let stats = unpack_layer(&b""[..], &s.root(), &small_limits()).unwrap();
    assert_eq!((stats.entries, stats.diff_id), (0, sha256(b"")));
}

#[test]
fn big_files_stream_through_intact() {
    if !is_root() {
        return;
    }
    let s = Scratch::new("big");
    let data: Vec<u8> = (0..5_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let tar = Tar::default().file("blob", &data).file("after", b"ok").finish();
    let stats = s.unpack_checked(&gzip(&tar), &Limits::default()).unwrap();
    assert_eq!(stats.bytes, data.len() as u64 + 2);
    assert_eq!(std::fs::read(s.root().join("blob")).unwrap(), data);
    assert_eq!(std::fs::read(s.root().join("after")).unwrap(), b"ok");
}

#[test]
fn media_types_and_magic() {
    assert_eq!(Compression::from_media_type("application/vnd.oci.image.layer.v1.tar+gzip"), Some(Compression::Gzip));
    assert_eq!(
        Compression::from_media_type("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"),
        Some(Compression::Gzip)
    );
    assert_eq!(
        Compression::from_media_type("application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"),
        Some(Compression::Zstd)
    );
    assert_eq!(Compression::from_media_type("application/vnd.oci.image.config.v1+json"), None);
    assert_eq!(Compression::sniff(&[0x1f, 0x8b, 8]), Compression::Gzip);
    assert_eq!(Compression::sniff(&[0x28, 0xb5, 0x2f, 0xfd]), Compression::Zstd);
    assert_eq!(Compression::sniff(b"usr/"), Compression::None);
    assert_eq!(Compression::sniff(b""), Compression::None);
}

// ---------------------------------------------------------------- snapshots

const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// A gzip layer blob on disk and its digests.
struct Blob {
    path: PathBuf,
    digest: String,
    diff_id: String,
}

fn blob(s: &Scratch, tar: &[u8]) -> Blob {
    let gz = gzip(tar);
    let path = s.dir.join(format!("blob-{}", COUNTER.fetch_add(1, Ordering::Relaxed)));
    std::fs::write(&path, &gz).unwrap();
    Blob { path, digest: sha256(&gz), diff_id: sha256(tar) }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|r| r.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn ensure_unpacks_once() {
    if !is_root() {
        return;
    }
    let s = Scratch::new("ensure");
    let store = SnapshotStore::new(s.dir.join("snapshots"));
    let b = blob(&s, &Tar::default().file("hello", b"world").finish());
    let opened = AtomicUsize::new(0);
    let open = || {
        opened.fetch_add(1, Ordering::SeqCst);
        File::open(&b.path)
    };
    let p = store.ensure(&b.digest, LAYER_TYPE, Some(&b.diff_id), open).unwrap();
    assert_eq!(p, store.root().join(b.digest.strip_prefix("sha256:").unwrap()));
    assert_eq!(std::fs::read(p.join("hello")).unwrap(), b"world");
    let before = lstat(&p);
    let again = store
        .ensure(&b.digest, LAYER_TYPE, Some(&b.diff_id), || {
            opened.fetch_add(1, Ordering::SeqCst);
            File::open(&b.path)
        })
        .unwrap();
    assert_eq!(again, p);
    assert_eq!(opened.load(Ordering::SeqCst), 1, "the second call unpacked again");
    let after = lstat(&p);
    assert_eq!((before.ino(), before.mtime(), before.mtime_nsec()), (after.ino(), after.mtime(), after.mtime_nsec()));
    assert_eq!(store.list().unwrap(), std::slice::from_ref(&b.digest));
    assert_eq!(store.get(&b.digest).unwrap(), Some(p.clone()));
    assert_eq!(names(store.root()), [b.digest.strip_prefix("sha256:").unwrap()]);
    assert!(store.remove(&b.digest).unwrap());
    assert!(!store.remove(&b.digest).unwrap());
    assert!(names(store.root()).is_empty());
}

#[test]
fn a_wrong_diff_id_or_a_hostile_layer_leaves_nothing() {
    if !is_root() {
        return;
    }
    let s = Scratch::new("mismatch");
    let store = SnapshotStore::new(s.dir.join("snapshots"));
    let b = blob(&s, &Tar::default().file("hello", b"world").finish());
    let wrong = sha256(b"something else");
    let e = store.ensure(&b.digest, LAYER_TYPE, Some(&wrong), || File::open(&b.path)).unwrap_err();
    assert!(matches!(e, ImageError::DiffIdMismatch { ref expected, .. } if *expected == wrong), "{e}");
    assert!(names(store.root()).is_empty(), "left {:?}", names(store.root()));

    // Targets stay inside the scratch dir so a regression cannot harm the host.
    let outside = s.outside();
    let evil = blob(
        &s,
        &Tar::default().file("ok", b"").symlink("x", outside.to_str().unwrap()).file("x/sentinel", b"").finish(),
    );
    let e = store.ensure(&evil.digest, LAYER_TYPE, None, || File::open(&evil.path)).unwrap_err();
    assert!(matches!(e.root_cause(), ImageError::UnsafePath { .. }), "{e}");
    assert!(e.to_string().contains(&evil.digest), "{e}");
    assert!(names(store.root()).is_empty());
    assert_eq!(std::fs::read(s.outside().join("sentinel")).unwrap(), SENTINEL);

    let e = store.ensure(&b.digest, "application/vnd.oci.image.config.v1+json", None, || File::open(&b.path));
    assert!(matches!(e, Err(ImageError::UnsupportedMediaType { .. })));
    let e = store.ensure("sha256:../../etc", LAYER_TYPE, None, || File::open(&b.path));
    assert!(matches!(e, Err(ImageError::InvalidDigest { .. })));
    let e = store.ensure(&b.digest, LAYER_TYPE, None, || Err(io::Error::other("blob is gone"))).unwrap_err();
    assert!(matches!(e.root_cause(), ImageError::Read { .. }), "{e}");
    assert!(names(store.root()).is_empty());
}

#[test]
fn concurrent_ensures_make_one_snapshot() {
    if !is_root() {
        return;
    }
    let s = Scratch::new("concurrent");
    let mut t = Tar::default();
    for i in 0..200 {
        t = t.file(&format!("d{}/f{i}", i % 7), &vec![i as u8; 10_000]);
    }
    let b = blob(&s, &t.finish());
    for store in [SnapshotStore::new(s.dir.join("one")), SnapshotStore::new(s.dir.join("two"))] {
        let store = Arc::new(store);
        let barrier = Arc::new(Barrier::new(4));
        let paths: Vec<PathBuf> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let (store, barrier, b) = (store.clone(), barrier.clone(), &b);
                    scope.spawn(move || {
                        barrier.wait();
                        store.ensure(&b.digest, LAYER_TYPE, Some(&b.diff_id), || File::open(&b.path)).unwrap()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(paths.iter().all(|p| *p == paths[0]));
        assert_eq!(names(store.root()), [b.digest.strip_prefix("sha256:").unwrap()]);
        assert_eq!(std::fs::read_dir(paths[0].join("d3")).unwrap().count(), 29);
    }

    // Two stores on one directory do not share the in-process lock: both unpack,
    // one rename wins and the other cleans up after itself.
    let root = s.dir.join("shared");
    let stores = [SnapshotStore::new(root.clone()), SnapshotStore::new(root.clone())];
    let barrier = Barrier::new(2);
    std::thread::scope(|scope| {
        for store in &stores {
            let (barrier, b) = (&barrier, &b);
            scope.spawn(move || {
                barrier.wait();
                store.ensure(&b.digest, LAYER_TYPE, Some(&b.diff_id), || File::open(&b.path)).unwrap()
            });
        }
    });
    assert_eq!(names(&root), [b.digest.strip_prefix("sha256:").unwrap()]);
}

#[test]
fn gc_keeps_what_it_is_told_and_sweeps_leftovers() {
    if !is_root() {
        return;
    }
    let s = Scratch::new("gc");
    let store = SnapshotStore::new(s.dir.join("snapshots"));
    let a = blob(&s, &Tar::default().file("a", b"a").finish());
    let b = blob(&s, &Tar::default().file("b", b"b").finish());
    store.ensure(&a.digest, LAYER_TYPE, None, || File::open(&a.path)).unwrap();
    store.ensure(&b.digest, LAYER_TYPE, None, || File::open(&b.path)).unwrap();
    let stale = store.root().join(format!("{}.tmp-0123456789abcdef", "c".repeat(64)));
    std::fs::create_dir_all(stale.join("half/unpacked")).unwrap();
    std::fs::write(store.root().join("not-a-snapshot"), b"").unwrap();
    let keep: HashSet<String> = [a.digest.clone()].into();
    let report = store.gc(&keep).unwrap();
    assert_eq!(report.removed, std::slice::from_ref(&b.digest));
    assert_eq!(report.stale_tmp, 1);
    assert_eq!(store.list().unwrap(), std::slice::from_ref(&a.digest));
    assert!(!stale.exists());
    assert!(store.root().join("not-a-snapshot").exists());
    assert_eq!(store.gc(&keep).unwrap(), snapshots::GcReport::default());
}

// ---------------------------------------------------------------- flattening

/// A read-only overlay of snapshots (topmost first), detached on drop.
struct ReadOnlyOverlay(PathBuf);

impl ReadOnlyOverlay {
    fn mount(lowers: &[PathBuf], target: &Path) -> ReadOnlyOverlay {
        std::fs::create_dir_all(target).unwrap();
        let lower: Vec<String> = lowers.iter().map(|p| p.display().to_string()).collect();
        let data = CString::new(format!("lowerdir={}", lower.join(":"))).unwrap();
        rustix::mount::mount("overlay", target, "overlay", rustix::mount::MountFlags::empty(), data.as_c_str())
            .unwrap_or_else(|e| panic!("mount overlay: {e}"));
        ReadOnlyOverlay(target.to_path_buf())
    }
}

impl Drop for ReadOnlyOverlay {
    fn drop(&mut self) {
        // MNT_DETACH never blocks on busy files.
        let _ = rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::DETACH);
    }
}

fn dir_with_mode(name: &str, mode: u32) -> Header {
    let mut h = header(name.as_bytes(), EntryType::Directory, 0);
    h.set_mode(mode);
    h
}

/// Five layers exercising every way a higher layer changes a lower one.
fn stacked_layers() -> Vec<Vec<u8>> {
    vec![
        Tar::default()
            .dir("etc/")
            .file("etc/a", b"a1")
            .file("etc/b", b"b1")
            .hardlink("etc/b2", "etc/b")
            .symlink("etc/link", "a")
            .dir("data/")
            .dir("data/old/")
            .file("data/old/x", b"x")
            .file("data/y", b"y")
            .dir("var/")
            .file("var/log", b"log")
            .file("swap", b"a file that becomes a directory")
            .dir("dirgone/")
            .file("dirgone/inner", b"i")
            .dir("todir/")
            .file("todir/f", b"a directory that becomes a file")
            .finish(),
        Tar::default()
            .dir("etc/")
            .file("etc/.wh.a", b"")
            .dir("data/")
            .file("data/.wh..wh..opq", b"")
            .file("data/z", b"z")
            .raw(dir_with_mode("swap/", 0o750), b"")
            .file("swap/inner", b"s")
            .file(".wh.dirgone", b"")
            .file("todir", b"now a file")
            .finish(),
        Tar::default()
            .file("etc/a", b"a3")
            .file("var/.wh.log", b"")
            .file("dirgone", b"a file where a directory was")
            .pax(&[("SCHILY.xattr.user.note", b"kept")])
            .file("etc/noted", b"n")
            .finish(),
        Tar::default().dir("deep/").dir("deep/er/").file("deep/er/f", b"d").symlink("etc/link", "b").finish(),
        Tar::default().dir("data/old/").file("data/old/new", b"back").file("deep/.wh.er", b"").finish(),
    ]
}

/// Unpacks `tars` into `store`; their digests, bottom first.
fn unpack_all(s: &Scratch, store: &SnapshotStore, tars: &[Vec<u8>]) -> Vec<String> {
    tars.iter()
        .map(|t| {
            let b = blob(s, t);
            store.ensure(&b.digest, LAYER_TYPE, Some(&b.diff_id), || File::open(&b.path)).unwrap();
            b.digest
        })
        .collect()
}

#[test]
fn a_flattened_snapshot_shows_what_overlayfs_shows() {
    if !is_root() {
        return;
    }
    let s = Scratch::new("flatten");
    let store = SnapshotStore::new(s.dir.join("snapshots"));
    let digests = unpack_all(&s, &store, &stacked_layers());
    let refs: Vec<&str> = digests.iter().map(String::as_str).collect();
    let flat = store.flatten(&refs).unwrap();

    let snapshots: Vec<PathBuf> = refs.iter().rev().map(|d| store.get(d).unwrap().unwrap()).collect();
    let mnt = s.dir.join("mnt");
    let overlay = ReadOnlyOverlay::mount(&snapshots, &mnt);
    let seen = tree(&mnt);
    drop(overlay);
    assert_eq!(tree(&flat), seen, "the flattened snapshot differs from the overlay of its layers");

    // Spot checks, so the comparison above cannot pass on two empty trees.
    assert_eq!(std::fs::read(flat.join("etc/a")).unwrap(), b"a3");
    assert!(!flat.join("var/log").exists() && !flat.join("data/y").exists() && !flat.join("data/old/x").exists());
    assert_eq!(std::fs::read(flat.join("data/old/new")).unwrap(), b"back");
    assert_eq!(std::fs::read(flat.join("dirgone")).unwrap(), b"a file where a directory was");
    assert_eq!(std::fs::read(flat.join("swap/inner")).unwrap(), b"s");
    assert_eq!(std::fs::read_link(flat.join("etc/link")).unwrap(), Path::new("b"));
    assert_eq!(lstat(&flat.join("swap")).mode() & 0o7777, 0o750);
    assert!(lstat(&flat.join("deep")).is_dir() && !flat.join("deep/er").exists());
    assert_eq!(lstat(&flat.join("etc/b")).ino(), lstat(&flat.join("etc/b2")).ino(), "a hardlink pair came apart");
    assert_eq!(getxattr(&flat.join("etc/noted"), "user.note").as_deref(), Some(&b"kept"[..]));
    // Nothing below a flattened snapshot: no whiteouts, no opaque markers.
    assert_eq!(getxattr(&flat.join("data"), "trusted.overlay.opaque"), None);
    assert!(seen.values().all(|(mode, ..)| mode & libc::S_IFMT != libc::S_IFCHR));
    assert!(tree(&flat).values().all(|(mode, ..)| mode & libc::S_IFMT != libc::S_IFCHR));

    // Made once: a second call reuses the directory.
    let ino = lstat(&flat).ino();
    assert_eq!(store.flatten(&refs).unwrap(), flat);
    assert_eq!(lstat(&flat).ino(), ino);
}

#[test]
fn lowers_flatten_the_bottom_layers_only_when_the_paths_do_not_fit() {
    if !is_root() {
        return;
    }
    let s = Scratch::new("lowers");
    let store = SnapshotStore::new(s.dir.join("snapshots"));
    let tars: Vec<Vec<u8>> = (0..6).map(|i| Tar::default().file(&format!("f{i}"), b"x").finish()).collect();
    let digests = unpack_all(&s, &store, &tars);
    let refs: Vec<&str> = digests.iter().map(String::as_str).collect();
    let path_len = store.path(refs[0]).unwrap().as_os_str().len();

    let all = store.lowers(&refs, 6 * (path_len + 1)).unwrap();
    let expected: Vec<PathBuf> = refs.iter().rev().map(|d| store.path(d).unwrap()).collect();
    assert_eq!(all, expected, "everything fits: the snapshots themselves, topmost first");

    // Room for three paths: the top two layers plus one flattened snapshot of four.
    let three = store.lowers(&refs, 3 * (path_len + 1) + 10).unwrap();
    assert_eq!(three.len(), 3, "{three:?}");
    assert_eq!(three[..2], expected[..2]);
    let flat = &three[2];
    let name = flat.file_name().unwrap().to_str().unwrap().to_string();
    assert!(name.starts_with("flat-"), "{name}");
    assert_eq!(names(flat), ["f0", "f1", "f2", "f3"]);
    assert_eq!(store.lowers(&refs, 3 * (path_len + 1) + 10).unwrap(), three);

    // gc treats a flattened snapshot like any other: kept when named, else swept.
    let mut keep: HashSet<String> = digests.iter().cloned().collect();
    let flat_id = name.replace("flat-", "flat:");
    keep.insert(flat_id.clone());
    assert_eq!(store.gc(&keep).unwrap(), snapshots::GcReport::default());
    keep.remove(&flat_id);
    assert_eq!(store.gc(&keep).unwrap().removed, [flat_id]);
    assert!(!flat.exists());
    assert_eq!(store.list().unwrap().len(), 6, "the layers themselves are untouched");
}

#[test]
fn a_layer_listed_twice_is_mounted_once_at_its_topmost_place() {
    if !is_root() {
        return;
    }
    let s = Scratch::new("twice");
    let store = SnapshotStore::new(s.dir.join("snapshots"));
    let a = Tar::default().file("f", b"a").dir("d/").file("d/x", b"x").file(".wh.g", b"").finish();
    let b =
        Tar::default().file("f", b"b").file("g", b"g").dir("d/").file("d/.wh..wh..opq", b"").file("d/y", b"y").finish();
    let c = Tar::default().file("h", b"h").finish();
    let digests = unpack_all(&s, &store, &[a.clone(), b, a, c]);
    let refs: Vec<&str> = digests.iter().map(String::as_str).collect();
    assert_eq!(refs[0], refs[2]);
    let lowers = store.lowers(&refs, 1 << 20).unwrap();
    let expected: Vec<PathBuf> = [refs[3], refs[2], refs[1]].iter().map(|d| store.path(d).unwrap()).collect();
    assert_eq!(lowers, expected, "the lower copy is left out");
    // Leaving it out changes nothing: the kernel's overlay of what `lowers` gives
    // shows what merging every copy in order shows.
    let mnt = s.dir.join("mnt");
    let overlay = ReadOnlyOverlay::mount(&lowers, &mnt);
    let seen = tree(&mnt);
    drop(overlay);
    let flat = store.flatten(&refs).unwrap();
    assert_eq!(tree(&flat), seen);
    assert_eq!(std::fs::read(flat.join("f")).unwrap(), b"a");
    assert!(!flat.join("g").exists());
    assert_eq!(names(&flat.join("d")), ["x", "y"]);
    // And when the stack must be flattened, the same rule holds.
    let path_len = store.path(refs[0]).unwrap().as_os_str().len();
    let small = store.lowers(&refs, 2 * (path_len + 1) + 10).unwrap();
    assert_eq!(small.len(), 2);
    assert_eq!(small[0], store.path(refs[3]).unwrap());
    assert_eq!(tree(&small[1]), tree(&store.flatten(&[refs[1], refs[2]]).unwrap()));
}

/// `BERTH_BENCH_LAYER=<blob> cargo test --release --lib images::tests::unpack_speed -- --ignored --nocapture`
/// unpacks a real layer blob into a temp dir and prints the time taken.
#[test]
#[ignore = "a benchmark; needs BERTH_BENCH_LAYER"]
fn unpack_speed() {
    let Some(layer) = std::env::var_os("BERTH_BENCH_LAYER") else {
        eprintln!("skipping: BERTH_BENCH_LAYER is not set");
        return;
    };
    let s = Scratch::new("bench");
    let started = std::time::Instant::now();
    let stats = unpack_layer(File::open(&layer).unwrap(), &s.root(), &Limits::default()).unwrap();
    let took = started.elapsed();
    eprintln!(
        "unpacked {} entries, {} MiB ({}) in {:.2?}: {:.0} MiB/s of tar data",
        stats.entries,
        stats.bytes >> 20,
        stats.compression.as_str(),
        took,
        stats.bytes as f64 / (1 << 20) as f64 / took.as_secs_f64()
    );
}
