//! `berth admin backup` and `berth admin restore`: one `tar.zst` file.
//!
//! Entries, all plain files (mode 0600), in this order:
//! - `state.db`: a consistent copy of the database (`store::backup::snapshot`),
//!   with upload sessions dropped;
//! - `secrets/host.key`: the age key that opens sealed secrets (so the archive is
//!   as secret as the key itself);
//! - `registry/blobs/sha256/<2 hex>/<64 hex>`: every manifest the copy names (the
//!   registry's own metadata: a manifest's bytes live only in the blob store), and
//!   with `--with-blobs` every blob the copy knows;
//! - `MANIFEST.json`, last: format version, schema version, and the size and
//!   sha256 of every entry before it, plus blobs that went missing between the copy
//!   and the read (a collection ran in between; nothing references them any more).
//!
//! The database is copied first and then the blobs it names: blobs are immutable and
//! content-addressed, so pushes running meanwhile only add blobs the copy does not
//! know about. The zstd frame carries its own checksum as well.
//!
//! Restore unpacks into a fresh directory beside the target, checking as it goes
//! that each entry is a plain file under one of the names above (nothing else: no
//! links, no `..`, no absolute paths) and that each blob hashes to its name; then
//! that the manifest lists exactly what was unpacked with matching sizes and sums,
//! and that the database passes SQLite's check and has a schema this binary runs.
//! Only then is the directory renamed onto the target, in one step. A truncated or
//! altered archive is refused and the target is left as it was.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::{AdminError, Result};
use crate::error::PathError;

/// The manifest's entry name; always the archive's last entry.
pub const MANIFEST: &str = "MANIFEST.json";
const FORMAT: &str = "berth-backup";
const FORMAT_VERSION: u32 = 1;
/// A manifest larger than this is not one berth wrote.
const MAX_MANIFEST: u64 = 256 << 20;
const COPY_CHUNK: usize = 256 << 10;

/// What the archive holds, written as its last entry.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub berth_version: String,
    pub created_at: String,
    pub schema_version: i64,
    pub with_blobs: bool,
    pub entries: Vec<Entry>,
    /// Blobs the database copy names whose files were gone when read: collected
    /// between the copy and the read, so unreferenced.
    pub missing_blobs: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

/// What a backup wrote.
#[derive(Debug)]
pub struct BackupSummary {
    pub users: i64,
    pub projects: i64,
    pub blobs: usize,
    pub bytes: u64,
    pub missing_blobs: usize,
}

fn path_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> AdminError + 'a {
    move |e| AdminError::Path(PathError::new(op, path, e))
}

/// Removes a path on drop unless disarmed: the partial output of a failed run.
struct Cleanup {
    path: Option<PathBuf>,
    dir: bool,
}

impl Cleanup {
    fn file(path: PathBuf) -> Self {
        Cleanup { path: Some(path), dir: false }
    }
    fn dir(path: PathBuf) -> Self {
        Cleanup { path: Some(path), dir: true }
    }
    fn disarm(&mut self) {
        self.path = None;
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            let _ = if self.dir { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
        }
    }
}

/// A sibling of `path` with a unique suffix (same filesystem, so a rename is atomic).
fn sibling(path: &Path, what: &str) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "berth".into());
    path.with_file_name(format!(".{name}.{what}-{}", crate::ids::new_id("t").to_lowercase()))
}

/// Progress lines on stderr, at most one a second (plus the last).
struct Progress {
    last: Instant,
}

impl Progress {
    fn new() -> Self {
        Progress { last: Instant::now() }
    }
    fn tick(&mut self, what: &str, done: usize, total: usize, bytes: u64) {
        if done == total || self.last.elapsed() >= Duration::from_secs(1) {
            self.last = Instant::now();
            eprintln!("{what}: {done}/{total} blobs, {:.1} MiB", bytes as f64 / (1024.0 * 1024.0));
        }
    }
}

/// Copies `len` bytes of `from` into `to`, hashing them; the number copied and the sum.
fn copy_hashed(mut from: impl Read, mut to: impl Write) -> std::io::Result<(u64, String)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; COPY_CHUNK];
    let mut total = 0u64;
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        to.write_all(&buf[..n])?;
        total += n as u64;
    }
    Ok((total, format!("{:x}", hasher.finalize())))
}

/// A tar writer that hashes each file as it appends it.
struct Writer<W: Write> {
    tar: tar::Builder<W>,
    entries: Vec<Entry>,
    bytes: u64,
}

impl<W: Write> Writer<W> {
    /// Appends the file at `src` as `name`; `want` is the sha256 it must have.
    fn file(&mut self, name: &str, src: &Path, want: Option<&str>) -> Result<()> {
        let f = File::open(src).map_err(path_err("open", src))?;
        let size = f.metadata().map_err(path_err("stat", src))?.len();
        let mut header = header(size);
        let mut hasher = HashingReader { inner: f.take(size), hasher: Sha256::new(), count: 0 };
        self.tar.append_data(&mut header, name, &mut hasher).map_err(path_err("archive", src))?;
        if hasher.count != size {
            return Err(AdminError::Invalid(format!("{} changed size while it was copied", src.display())));
        }
        let sha256 = format!("{:x}", hasher.hasher.finalize());
        if let Some(want) = want {
            if want != sha256 {
                return Err(AdminError::Invalid(format!(
                    "{} does not match its digest (sha256:{sha256}): the blob store is damaged",
                    src.display()
                )));
            }
        }
        self.bytes += size;
        self.entries.push(Entry { path: name.to_string(), size, sha256 });
        Ok(())
    }
}

fn header(size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_size(size);
    h.set_mode(0o600);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mtime(crate::ids::unix_now().max(0) as u64);
    h
}

struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// `berth admin backup`: writes the archive to `output` (replaced only when the
/// whole archive is written).
pub fn backup(data_dir: &Path, output: &Path, with_blobs: bool) -> Result<BackupSummary> {
    let db = data_dir.join("state.db");
    if !db.is_file() {
        return Err(AdminError::NoState(data_dir.to_path_buf()));
    }
    let partial = sibling(output, "partial");
    let mut partial_guard = Cleanup::file(partial.clone());
    let copy = sibling(output, "db");
    let _copy_guard = Cleanup::file(copy.clone());
    let facts = crate::store::backup::snapshot(&db, &copy)?;
    eprintln!(
        "backup: database copied (schema {}, {} users, {} projects, {} manifests, {} blobs known)",
        facts.schema_version,
        facts.users,
        facts.projects,
        facts.manifests.len(),
        facts.blobs.len()
    );
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)
        .map_err(path_err("create", &partial))?;
    let mut encoder = zstd::stream::write::Encoder::new(file, 3).map_err(path_err("compress", &partial))?;
    encoder.include_checksum(true).map_err(path_err("compress", &partial))?;
    let mut w = Writer { tar: tar::Builder::new(encoder), entries: Vec::new(), bytes: 0 };
    w.file("state.db", &copy, None)?;
    let key = data_dir.join("secrets").join("host.key");
    if key.is_file() {
        w.file("secrets/host.key", &key, None)?;
    } else {
        eprintln!("backup: no host key at {} (nothing sealed can be opened without one)", key.display());
    }
    let blobs = crate::registry::blobs::BlobStore::new(data_dir.join("registry"));
    let wanted: Vec<&str> =
        facts.blobs.iter().map(|(d, _)| d.as_str()).filter(|d| with_blobs || facts.manifests.contains(*d)).collect();
    let mut missing = Vec::new();
    let mut progress = Progress::new();
    let blob_bytes_before = w.bytes;
    for (i, digest) in wanted.iter().enumerate() {
        let d = crate::registry::names::Digest::parse(digest)
            .map_err(|_| AdminError::Invalid(format!("the database names a malformed digest {digest}")))?;
        let path = blobs.blob_path(&d);
        if !path.exists() {
            missing.push(digest.to_string());
            continue;
        }
        let name = format!("registry/blobs/sha256/{}/{}", &d.hex()[..2], d.hex());
        w.file(&name, &path, Some(d.hex()))?;
        progress.tick("backup", i + 1, wanted.len(), w.bytes - blob_bytes_before);
    }
    if !missing.is_empty() {
        eprintln!(
            "backup: {} blobs were collected after the database copy (unreferenced) and are left out",
            missing.len()
        );
    }
    let manifest = Manifest {
        format: FORMAT.into(),
        version: FORMAT_VERSION,
        berth_version: env!("CARGO_PKG_VERSION").into(),
        created_at: crate::ids::now_rfc3339(),
        schema_version: facts.schema_version,
        with_blobs,
        entries: w.entries.clone(),
        missing_blobs: missing.clone(),
    };
    let body = serde_json::to_vec_pretty(&manifest).map_err(|e| AdminError::Invalid(e.to_string()))?;
    let mut h = header(body.len() as u64);
    w.tar.append_data(&mut h, MANIFEST, body.as_slice()).map_err(path_err("archive", &partial))?;
    let encoder = w.tar.into_inner().map_err(path_err("archive", &partial))?;
    let file = encoder.finish().map_err(path_err("compress", &partial))?;
    file.sync_all().map_err(path_err("sync", &partial))?;
    std::fs::rename(&partial, output).map_err(path_err("rename", output))?;
    partial_guard.disarm();
    sync_parent(output);
    let blob_count = manifest.entries.iter().filter(|e| e.path.starts_with("registry/")).count();
    eprintln!(
        "backup: wrote {} ({} entries); it holds the host key: keep it secret",
        output.display(),
        manifest.entries.len() + 1
    );
    Ok(BackupSummary {
        users: facts.users,
        projects: facts.projects,
        blobs: blob_count,
        bytes: w.bytes,
        missing_blobs: missing.len(),
    })
}

fn sync_parent(path: &Path) {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if let Ok(d) = File::open(parent) {
            let _ = d.sync_all();
        }
    }
}

/// Whether `name` is one of the paths a backup may hold, and the blob digest (hex)
/// it must hash to when it is a blob.
fn allowed(name: &str) -> std::result::Result<Option<&str>, String> {
    if name == "state.db" || name == "secrets/host.key" {
        return Ok(None);
    }
    let hex = |s: &str, n| s.len() == n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if let Some(rest) = name.strip_prefix("registry/blobs/sha256/") {
        if let Some((prefix, digest)) = rest.split_once('/') {
            if hex(prefix, 2) && hex(digest, 64) && digest.starts_with(prefix) {
                return Ok(Some(digest));
            }
        }
    }
    Err(format!("unexpected entry {name:?}"))
}

/// `berth admin restore`: the archive at `input` becomes the state dir `target`,
/// which must be empty or missing. Returns the manifest.
pub fn restore(input: &Path, target: &Path) -> Result<Manifest> {
    match std::fs::read_dir(target) {
        Ok(mut rd) => {
            if rd.next().is_some() {
                return Err(AdminError::NotEmpty(target.to_path_buf()));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(PathError::new("read", target, e).into()),
    }
    let target = std::path::absolute(target).map_err(path_err("resolve", target))?;
    let parent =
        target.parent().ok_or_else(|| AdminError::Invalid("restore needs a directory to restore into".into()))?;
    std::fs::DirBuilder::new().recursive(true).mode(0o755).create(parent).map_err(path_err("create", parent))?;
    let staging = sibling(&target, "restore");
    std::fs::DirBuilder::new().mode(0o700).create(&staging).map_err(path_err("create", &staging))?;
    let mut guard = Cleanup::dir(staging.clone());
    let manifest = unpack_and_verify(input, &staging)?;
    // The target is still empty (or missing): rename(2) replaces an empty directory.
    if let Ok(mut rd) = std::fs::read_dir(&target) {
        if rd.next().is_some() {
            return Err(AdminError::NotEmpty(target.clone()));
        }
    }
    std::fs::rename(&staging, &target).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOTEMPTY) | Some(libc::EEXIST) => AdminError::NotEmpty(target.clone()),
        _ => AdminError::Path(PathError::new("rename", &target, e)),
    })?;
    guard.disarm();
    sync_parent(&target);
    Ok(manifest)
}

fn bad(message: impl Into<String>) -> AdminError {
    AdminError::BadArchive(message.into())
}

/// Unpacks `input` into `dir` and checks all of it (see the module header).
fn unpack_and_verify(input: &Path, dir: &Path) -> Result<Manifest> {
    let file = File::open(input).map_err(path_err("open", input))?;
    let decoder = zstd::stream::read::Decoder::new(file).map_err(|e| bad(format!("not zstd: {e}")))?;
    let mut archive = tar::Archive::new(decoder);
    let mut unpacked: BTreeMap<String, (u64, String)> = BTreeMap::new();
    let mut manifest_bytes: Option<Vec<u8>> = None;
    let mut progress = Progress::new();
    let entries = archive.entries().map_err(|e| bad(format!("read: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(format!("read: {e}")))?;
        let name = String::from_utf8(entry.path_bytes().into_owned()).map_err(|_| bad("an entry name is not UTF-8"))?;
        if manifest_bytes.is_some() {
            return Err(bad(format!("entry {name:?} after {MANIFEST}")));
        }
        let kind = entry.header().entry_type();
        if kind != tar::EntryType::Regular {
            return Err(bad(format!("entry {name:?} is not a plain file ({kind:?})")));
        }
        if name == MANIFEST {
            if entry.size() > MAX_MANIFEST {
                return Err(bad("the manifest is too large"));
            }
            let mut body = Vec::new();
            entry.read_to_end(&mut body).map_err(|e| bad(format!("read {MANIFEST}: {e}")))?;
            manifest_bytes = Some(body);
            continue;
        }
        let digest = allowed(&name).map_err(bad)?.map(str::to_string);
        if unpacked.contains_key(&name) {
            return Err(bad(format!("entry {name:?} appears twice")));
        }
        let dest = dir.join(&name);
        if let Some(p) = dest.parent() {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(p).map_err(path_err("create", p))?;
        }
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&dest)
            .map_err(path_err("create", &dest))?;
        let (size, sha256) = copy_hashed(&mut entry, &mut out).map_err(|e| bad(format!("read {name}: {e}")))?;
        out.sync_all().map_err(path_err("sync", &dest))?;
        if let Some(want) = &digest {
            if *want != sha256 {
                return Err(bad(format!("{name} does not hash to its name")));
            }
        }
        unpacked.insert(name, (size, sha256));
        if digest.is_some() {
            let n = unpacked.len();
            progress.tick("restore", n, n, unpacked.values().map(|(s, _)| s).sum());
        }
    }
    // Whatever follows the tar's end inside the zstd stream must decode too: a cut or
    // altered frame fails its checksum here if not before.
    let mut rest = archive.into_inner();
    std::io::copy(&mut rest, &mut std::io::sink()).map_err(|e| bad(format!("read: {e}")))?;
    let body = manifest_bytes.ok_or_else(|| bad(format!("no {MANIFEST} (the archive is cut short)")))?;
    let manifest: Manifest = serde_json::from_slice(&body).map_err(|e| bad(format!("{MANIFEST}: {e}")))?;
    if manifest.format != FORMAT || manifest.version != FORMAT_VERSION {
        return Err(bad(format!(
            "format {} version {} is not one this berth reads",
            manifest.format, manifest.version
        )));
    }
    let listed: BTreeMap<String, (u64, String)> =
        manifest.entries.iter().map(|e| (e.path.clone(), (e.size, e.sha256.clone()))).collect();
    if listed.len() != manifest.entries.len() {
        return Err(bad(format!("{MANIFEST} lists an entry twice")));
    }
    for (name, got) in &unpacked {
        match listed.get(name) {
            None => return Err(bad(format!("{name} is not in {MANIFEST}"))),
            Some(want) if want != got => {
                return Err(bad(format!("{name} does not match its checksum in {MANIFEST}")));
            }
            Some(_) => {}
        }
    }
    if let Some(name) = listed.keys().find(|n| !unpacked.contains_key(*n)) {
        return Err(bad(format!("{name} is listed in {MANIFEST} but missing (the archive is cut short)")));
    }
    if !unpacked.contains_key("state.db") {
        return Err(bad("no state.db"));
    }
    let version = crate::store::backup::check_copy(&dir.join("state.db")).map_err(|e| match e {
        crate::store::StoreError::NewerSchema { .. } => AdminError::Store(e),
        other => bad(format!("state.db: {other}")),
    })?;
    if version != manifest.schema_version {
        return Err(bad(format!("state.db has schema {version}, {MANIFEST} says {}", manifest.schema_version)));
    }
    let secrets = dir.join("secrets");
    if secrets.is_dir() {
        std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o700))
            .map_err(path_err("chmod", &secrets))?;
    }
    eprintln!("restore: {} entries verified", unpacked.len() + 1);
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_names_a_backup_writes_are_accepted() {
        let d = "ab".to_string() + &"c".repeat(62);
        assert_eq!(allowed("state.db"), Ok(None));
        assert_eq!(allowed("secrets/host.key"), Ok(None));
        let blob = format!("registry/blobs/sha256/ab/{d}");
        assert_eq!(allowed(&blob), Ok(Some(d.as_str())));
        for bad in [
            "../state.db",
            "/state.db",
            "./state.db",
            "secrets/../state.db",
            "registry/blobs/sha256/ab/../../../../etc/passwd",
            &format!("registry/blobs/sha256/cd/{d}"),
            &format!("registry/blobs/sha256/AB/{}", d.to_uppercase()),
            "registry/blobs/sha256/ab/abc",
            "bootstrap-token",
            "",
        ] {
            assert!(allowed(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn links_and_entries_outside_the_list_are_refused_and_nothing_is_left() {
        let dir = std::env::temp_dir().join(crate::ids::new_id("archivetest"));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, build: &dyn Fn(&mut tar::Builder<zstd::stream::write::Encoder<'static, File>>)| {
            let path = dir.join(name);
            let enc = zstd::stream::write::Encoder::new(File::create(&path).unwrap(), 1).unwrap();
            let mut t = tar::Builder::new(enc);
            build(&mut t);
            t.into_inner().unwrap().finish().unwrap();
            path
        };
        let link = write("link.tar.zst", &|t| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            t.append_link(&mut h, "state.db", "/etc/passwd").unwrap();
        });
        let outside = write("outside.tar.zst", &|t| {
            let mut h = header(3);
            // `append_data` refuses `..`; a hostile archive would not.
            h.as_gnu_mut().unwrap().name[..11].copy_from_slice(b"../evil.txt");
            h.set_cksum();
            t.append(&h, &b"bad"[..]).unwrap();
        });
        for (input, says) in [(link, "not a plain file"), (outside, "unexpected entry")] {
            let target = dir.join("target");
            let err = restore(&input, &target).unwrap_err().to_string();
            assert!(err.contains(says) && err.contains("nothing was written"), "{err}");
            assert!(!target.exists());
            assert!(!dir.join("evil.txt").exists());
            let left: Vec<_> = std::fs::read_dir(&dir)
                .unwrap()
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
                .collect();
            assert!(left.is_empty(), "staging left behind: {left:?}");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}
