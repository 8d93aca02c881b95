//! Unpacking one layer (a possibly compressed tar stream) into a directory.
//!
//! Two threads: one decompresses and hashes (the diff_id) into 1 MiB chunks, the
//! other parses tar headers and writes files, the way `tar -xzf` pipes `gzip -d`
//! into `tar`. Every entry is created relative to a directory fd reached by
//! opening one component at a time with `O_NOFOLLOW | O_DIRECTORY` (see
//! [`Walker`]), so nothing is ever written through a symlink, whatever the archive
//! put in place earlier.
//!
//! The archive is read in raw mode: GNU long names and PAX headers are parsed
//! here, each under a size cap, because the `tar` crate would read them whole
//! into memory whatever size they claim.

use std::collections::BTreeMap;
use std::ffi::CStr;
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};

use rustix::fs::FileType;
use sha2::{Digest as _, Sha256};
use tar::EntryType;

use super::error::ImageError;
use super::fs::{self, Timestamp};

/// Size of the chunks passed from the decompressor to the writer, and of the
/// buffer file data is written from.
const CHUNK: usize = 1 << 20;
/// Chunks in flight between the two threads.
const QUEUE_DEPTH: usize = 4;
/// Read-ahead on the compressed input.
const INPUT_BUFFER: usize = 256 << 10;
/// Largest GNU long name or long link member accepted (PATH_MAX is 4096).
const MAX_LONG_NAME: u64 = 64 << 10;
/// Largest PAX header accepted (room for xattrs such as file capabilities).
const MAX_PAX_HEADER: u64 = 1 << 20;
/// Zero padding accepted after the end-of-archive marker (tar pads to records).
const MAX_TRAILER: u64 = 1 << 20;

/// The overlayfs xattr that marks a directory as hiding the lower layers' content.
const OPAQUE_XATTR: &CStr = c"trusted.overlay.opaque";
const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// The compression a layer media type declares, or `None` for a media type
    /// that is not a filesystem layer berth can unpack.
    pub fn from_media_type(media_type: &str) -> Option<Compression> {
        match media_type {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Some(Compression::None),
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Some(Compression::Gzip),
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => Some(Compression::Zstd),
            _ => None,
        }
    }

    /// What the first bytes of a blob say it is; anything without a gzip or zstd
    /// magic number is taken as a plain tar (which the tar parser then checks).
    pub fn sniff(prefix: &[u8]) -> Compression {
        if prefix.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if prefix.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "uncompressed",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }
}

/// Caps on what one layer may make berth write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Archive members (files, directories, links, whiteouts) per layer.
    pub max_entries: u64,
    /// Sum of the sizes all members declare.
    pub max_total_bytes: u64,
    /// Size one member may declare.
    pub max_entry_bytes: u64,
    /// The archive is a build context, not a layer: absolute names, whiteouts and
    /// links whose target leaves the archive's root are refused too.
    pub build_context: bool,
}

impl Limits {
    pub const DEFAULT_MAX_ENTRIES: u64 = 500_000;
    pub const DEFAULT_MAX_TOTAL_BYTES: u64 = 8 << 30;
    pub const DEFAULT_MAX_ENTRY_BYTES: u64 = 4 << 30;
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_entries: Self::DEFAULT_MAX_ENTRIES,
            max_total_bytes: Self::DEFAULT_MAX_TOTAL_BYTES,
            max_entry_bytes: Self::DEFAULT_MAX_ENTRY_BYTES,
            build_context: false,
        }
    }
}

/// What unpacking a layer did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackStats {
    /// Archive members processed (extension headers not counted).
    pub entries: u64,
    /// Data bytes the members declared (what regular files hold).
    pub bytes: u64,
    /// `sha256:<hex>` of the uncompressed tar stream, to check against the image
    /// config's `rootfs.diff_ids`.
    pub diff_id: String,
    /// The compression found by sniffing the blob.
    pub compression: Compression,
}

/// Unpacks a layer blob (gzip, zstd or plain tar, told apart by magic bytes) into
/// `dest`, which must be an existing directory, converting OCI whiteouts to
/// overlayfs form. Refuses, with nothing written outside `dest`: names with `..`,
/// writes through symlinks, hardlinks to anything outside, device nodes, fifos,
/// sparse files, and layers over `limits`. On error `dest` holds a partial tree
/// the caller should delete.
pub fn unpack_layer(src: impl Read + Send, dest: &Path, limits: &Limits) -> Result<UnpackStats, ImageError> {
    let root = fs::open_dir_path(dest).map_err(|e| ImageError::io("open", dest, e))?;
    std::thread::scope(|s| {
        let (tx, rx) = mpsc::sync_channel(QUEUE_DEPTH);
        let (recycle_tx, recycle_rx) = mpsc::channel();
        let feeder = std::thread::Builder::new()
            .name("layer-decompress".into())
            .spawn_scoped(s, move || feed(src, tx, recycle_rx))
            .map_err(|e| ImageError::io("start a decompression thread for", dest, e))?;
        let mut reader = ChunkReader { rx, recycle: recycle_tx, cur: Vec::new(), pos: 0, failed: false };
        let extracted = Extractor::new(root, limits).run(&mut reader);
        let stream_failed = reader.failed;
        // Dropping the reader unblocks the feeder if the extraction stopped early.
        drop(reader);
        let fed = match feeder.join() {
            Ok(fed) => fed,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        match (extracted, fed) {
            (Ok((entries, bytes)), Ok((compression, diff_id))) => {
                Ok(UnpackStats { entries, bytes, diff_id, compression })
            }
            (_, Err(FeedError::Stream(e))) if stream_failed => Err(e),
            (Err(e), _) => Err(e),
            (Ok(_), Err(FeedError::Stream(e))) => Err(e),
            (Ok(_), Err(FeedError::Cancelled)) => {
                Err(ImageError::Malformed { reason: "the layer stream stopped early".into() })
            }
        }
    })
}

enum FeedError {
    /// The blob could not be read or decompressed.
    Stream(ImageError),
    /// The extracting side went away first.
    Cancelled,
}

/// Decompresses `src` into chunks for the extracting thread, hashing as it goes.
fn feed(
    src: impl Read,
    tx: SyncSender<io::Result<Vec<u8>>>,
    recycle: Receiver<Vec<u8>>,
) -> Result<(Compression, String), FeedError> {
    let poison = |tx: &SyncSender<io::Result<Vec<u8>>>| {
        let _ = tx.send(Err(io::Error::other("the layer stream failed")));
    };
    // The magic numbers are read whole even from a source that returns short reads,
    // then put back in front of the rest.
    let mut src = src;
    let mut magic = [0u8; 4];
    let head = match read_full(&mut src, &mut magic) {
        Ok(n) => n,
        Err(e) => {
            poison(&tx);
            return Err(FeedError::Stream(ImageError::Read { source: e }));
        }
    };
    let compression = Compression::sniff(&magic[..head]);
    let src = BufReader::with_capacity(INPUT_BUFFER, io::Cursor::new(magic).take(head as u64).chain(src));
    let mut decoder: Box<dyn Read> = match compression {
        Compression::None => Box::new(src),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(src)),
        Compression::Zstd => match zstd::stream::read::Decoder::with_buffer(src) {
            Ok(d) => Box::new(d),
            Err(e) => {
                poison(&tx);
                return Err(FeedError::Stream(ImageError::Read { source: e }));
            }
        },
    };
    let mut hasher = Sha256::new();
    loop {
        let mut chunk = recycle.try_recv().unwrap_or_default();
        chunk.resize(CHUNK, 0);
        let mut filled = 0;
        while filled < CHUNK {
            match decoder.read(&mut chunk[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    poison(&tx);
                    return Err(FeedError::Stream(stream_error(compression, e)));
                }
            }
        }
        if filled == 0 {
            return Ok((compression, format!("sha256:{:x}", hasher.finalize())));
        }
        chunk.truncate(filled);
        hasher.update(&chunk);
        if tx.send(Ok(chunk)).is_err() {
            return Err(FeedError::Cancelled);
        }
    }
}

fn stream_error(compression: Compression, e: io::Error) -> ImageError {
    match e.kind() {
        io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput | io::ErrorKind::UnexpectedEof => {
            ImageError::Malformed { reason: format!("bad {} stream: {e}", compression.as_str()) }
        }
        _ => ImageError::Read { source: e },
    }
}

/// The extracting side of the pipeline: a `Read` over the feeder's chunks.
struct ChunkReader {
    rx: Receiver<io::Result<Vec<u8>>>,
    recycle: Sender<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
    /// The feeder reported a broken stream; its error explains what happened.
    failed: bool,
}

impl Read for ChunkReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.failed {
            return Err(io::Error::other("the layer stream failed"));
        }
        while self.pos == self.cur.len() {
            match self.rx.recv() {
                Ok(Ok(next)) => {
                    let done = std::mem::replace(&mut self.cur, next);
                    let _ = self.recycle.send(done);
                    self.pos = 0;
                }
                Ok(Err(e)) => {
                    self.failed = true;
                    return Err(e);
                }
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.cur.len() - self.pos);
        out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Ownership, mode and time for a directory, applied once the whole layer is
/// written so a read-only directory does not block its own contents.
#[derive(Debug, Clone, Copy)]
struct DirMeta {
    mode: u32,
    owner: Option<(u32, u32)>,
    mtime: Option<Timestamp>,
}

impl DirMeta {
    /// A parent the archive did not list: what `tar` and `mkdir -p` would make.
    const IMPLICIT: DirMeta = DirMeta { mode: 0o755, owner: None, mtime: None };
}

/// Finds directories under the root one component at a time, never following a
/// symlink, and remembers the last one (tar lists a directory's entries together).
struct Walker {
    root: OwnedFd,
    cached: Option<(Vec<u8>, OwnedFd)>,
    /// Every directory to finish at the end, by path from the root (`a/b`).
    dirs: BTreeMap<Vec<u8>, DirMeta>,
}

fn join(components: &[&[u8]]) -> Vec<u8> {
    components.join(&b'/')
}

fn describe(st: &io::Result<fs::Stat>) -> &'static str {
    match st {
        Ok(st) if fs::is_whiteout(st) => "whiteout",
        Ok(st) => match fs::file_type(st) {
            FileType::Symlink => "symlink",
            FileType::RegularFile => "regular file",
            _ => "special file",
        },
        Err(_) => "missing entry",
    }
}

fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

impl Walker {
    /// The directory at `components`, creating missing ones. A component that is
    /// a symlink or anything but a directory is refused.
    fn dir(&mut self, components: &[&[u8]], entry: &str) -> Result<BorrowedFd<'_>, ImageError> {
        if components.is_empty() {
            return Ok(self.root.as_fd());
        }
        let key = join(components);
        let hit = matches!(&self.cached, Some((k, _)) if *k == key);
        if !hit {
            // Start from the cached directory when the new one is below it.
            let (start, mut cur) = match self.cached.take() {
                Some((k, fd)) if key.starts_with(&k) && key.get(k.len()) == Some(&b'/') => {
                    (k.split(|b| *b == b'/').count(), Some(fd))
                }
                _ => (0, None),
            };
            for i in start..components.len() {
                let parent = cur.as_ref().map_or(self.root.as_fd(), |fd| fd.as_fd());
                let name = fs::cstring(components[i]).map_err(|e| ImageError::entry(entry, "open", e))?;
                let next = match fs::open_dir_at(parent, &name) {
                    Ok(fd) => fd,
                    Err(e) if errno(&e) == libc::ENOENT => {
                        fs::mkdir_at(parent, &name, 0o755)
                            .map_err(|e| ImageError::entry(entry, "create parent directory", e))?;
                        self.dirs.entry(join(&components[..=i])).or_insert(DirMeta::IMPLICIT);
                        fs::open_dir_at(parent, &name).map_err(|e| ImageError::entry(entry, "open", e))?
                    }
                    Err(e) if matches!(errno(&e), libc::ELOOP | libc::ENOTDIR) => {
                        let what = describe(&fs::stat_at(parent, &name));
                        let at = String::from_utf8_lossy(&join(&components[..=i])).into_owned();
                        return Err(ImageError::unsafe_path(
                            entry,
                            format!("its parent {at:?} is a {what}, not a directory"),
                        ));
                    }
                    Err(e) => return Err(ImageError::entry(entry, "open parent directory", e)),
                };
                cur = Some(next);
            }
            self.cached = cur.map(|fd| (key, fd));
        }
        match &self.cached {
            Some((_, fd)) => Ok(fd.as_fd()),
            None => Ok(self.root.as_fd()),
        }
    }

    /// The existing directory at `components`, without creating anything.
    fn lookup(&self, components: &[&[u8]]) -> io::Result<OwnedFd> {
        let mut cur = self.root.try_clone()?;
        for c in components {
            cur = fs::open_dir_at(cur.as_fd(), &fs::cstring(c)?)?;
        }
        Ok(cur)
    }
}

/// What the extension headers before a member said about it.
#[derive(Default)]
struct Pending {
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax: Option<Vec<u8>>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.long_name.is_none() && self.long_link.is_none() && self.pax.is_none()
    }
}

/// The PAX records berth uses.
#[derive(Default)]
struct Pax {
    path: Option<Vec<u8>>,
    linkpath: Option<Vec<u8>>,
    size: Option<u64>,
    uid: Option<u64>,
    gid: Option<u64>,
    mtime: Option<Timestamp>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    sparse: bool,
}

fn malformed(reason: impl Into<String>) -> ImageError {
    ImageError::Malformed { reason: reason.into() }
}

fn parse_pax(bytes: &[u8]) -> Result<Pax, ImageError> {
    let mut pax = Pax::default();
    for ext in tar::PaxExtensions::new(bytes) {
        let ext = ext.map_err(|e| malformed(format!("bad pax header: {e}")))?;
        let (key, value) = (ext.key_bytes(), ext.value_bytes());
        let number = |what: &str| {
            std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| malformed(format!("bad pax {what} {:?}", String::from_utf8_lossy(value))))
        };
        match key {
            b"path" => pax.path = Some(value.to_vec()),
            b"linkpath" => pax.linkpath = Some(value.to_vec()),
            b"size" => pax.size = Some(number("size")?),
            b"uid" => pax.uid = Some(number("uid")?),
            b"gid" => pax.gid = Some(number("gid")?),
            b"mtime" => pax.mtime = Some(parse_pax_time(value)?),
            k if k.starts_with(b"GNU.sparse.") => pax.sparse = true,
            k if k.starts_with(b"SCHILY.xattr.") => {
                pax.xattrs.push((k[b"SCHILY.xattr.".len()..].to_vec(), value.to_vec()));
            }
            _ => {}
        }
    }
    Ok(pax)
}

/// A PAX time: decimal seconds with an optional fraction, possibly negative.
fn parse_pax_time(value: &[u8]) -> Result<Timestamp, ImageError> {
    let bad = || malformed(format!("bad pax mtime {:?}", String::from_utf8_lossy(value)));
    let text = std::str::from_utf8(value).map_err(|_| bad())?;
    let (negative, text) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let sec: i64 = int.parse().map_err(|_| bad())?;
    let mut nsec: u32 = 0;
    for (i, d) in frac.bytes().take(9).enumerate() {
        nsec += u32::from(d - b'0') * 10u32.pow(8 - i as u32);
    }
    Ok(match (negative, nsec) {
        (false, _) => Timestamp { sec, nsec },
        (true, 0) => Timestamp { sec: -sec, nsec: 0 },
        (true, n) => Timestamp { sec: -sec - 1, nsec: 1_000_000_000 - n },
    })
}

/// Splits an archive name into components: a leading `/` and `.` components are
/// dropped, `..` anywhere is refused.
fn components<'a>(name: &'a [u8], entry: &str) -> Result<Vec<&'a [u8]>, ImageError> {
    let mut out = Vec::new();
    for c in name.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(ImageError::unsafe_path(entry, "it contains a \"..\" component")),
            c if c.contains(&0) => return Err(ImageError::unsafe_path(entry, "it contains a NUL byte")),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// Whether a symlink in `parents` pointing at `target` resolves, by its text alone,
/// to somewhere under the archive's root: relative, and never climbing above it.
/// (Nothing is ever written through a symlink while unpacking; this keeps a build
/// context from carrying links that point out of it at all.)
fn stays_inside(parents: &[&[u8]], target: &[u8]) -> bool {
    if target.starts_with(b"/") {
        return false;
    }
    let mut depth = parents.len();
    for c in target.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return false,
            },
            _ => depth += 1,
        }
    }
    true
}

/// A numeric header field; one left blank (all NULs or spaces) reads as 0, as Go's
/// `archive/tar` (which Docker and containerd use) reads it.
fn numeric(field: &[u8], parse: impl FnOnce() -> io::Result<u64>) -> io::Result<u64> {
    if field.iter().all(|b| *b == 0 || *b == b' ') { Ok(0) } else { parse() }
}

/// Reads an extension member's body, refusing one over `cap`.
fn read_extension(entry: &mut impl Read, size: u64, cap: u64, kind: &str) -> Result<Vec<u8>, ImageError> {
    if size > cap {
        return Err(malformed(format!("a {kind} header of {size} bytes is over the {cap}-byte cap")));
    }
    let mut out = Vec::with_capacity(size as usize);
    entry.take(size).read_to_end(&mut out).map_err(|e| malformed(format!("reading a {kind} header: {e}")))?;
    if out.len() as u64 != size {
        return Err(malformed(format!("the archive ends inside a {kind} header")));
    }
    Ok(out)
}

/// Reads until `buf` is full or the entry ends.
fn read_full(src: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match src.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Metadata of one member, from its header and PAX records.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: Timestamp,
}

struct Extractor<'l> {
    walker: Walker,
    limits: &'l Limits,
    entries: u64,
    bytes: u64,
    buf: Vec<u8>,
}

impl<'l> Extractor<'l> {
    fn new(root: OwnedFd, limits: &'l Limits) -> Self {
        Extractor {
            walker: Walker { root, cached: None, dirs: BTreeMap::new() },
            limits,
            entries: 0,
            bytes: 0,
            buf: Vec::new(),
        }
    }

    /// Extracts every member, then finishes directories and checks what follows
    /// the end-of-archive marker. Returns (members, bytes).
    fn run(mut self, reader: &mut ChunkReader) -> Result<(u64, u64), ImageError> {
        let mut archive = tar::Archive::new(&mut *reader);
        let entries = archive.entries().map_err(|e| malformed(e.to_string()))?.raw(true);
        let mut pending = Pending::default();
        for entry in entries {
            let mut entry = entry.map_err(|e| malformed(e.to_string()))?;
            let size = entry.size();
            match entry.header().entry_type() {
                EntryType::GNULongName if pending.long_name.is_none() => {
                    pending.long_name = Some(read_extension(&mut entry, size, MAX_LONG_NAME, "long name")?);
                }
                EntryType::GNULongLink if pending.long_link.is_none() => {
                    pending.long_link = Some(read_extension(&mut entry, size, MAX_LONG_NAME, "long link")?);
                }
                EntryType::XHeader if pending.pax.is_none() => {
                    pending.pax = Some(read_extension(&mut entry, size, MAX_PAX_HEADER, "pax")?);
                }
                EntryType::GNULongName | EntryType::GNULongLink | EntryType::XHeader => {
                    return Err(malformed("two extension headers of one kind describe the same member"));
                }
                EntryType::XGlobalHeader => {
                    // Nothing berth uses lives in global headers; count them so an
                    // endless run of them cannot keep the unpacker busy.
                    self.count_entry()?;
                    read_extension(&mut entry, size, MAX_PAX_HEADER, "global pax")?;
                }
                _ => {
                    let ext = std::mem::take(&mut pending);
                    self.member(&mut entry, ext)?;
                }
            }
        }
        if !pending.is_empty() {
            return Err(malformed("the archive ends after an extension header with no member"));
        }
        self.finish_dirs()?;
        check_trailer(reader)?;
        Ok((self.entries, self.bytes))
    }

    fn count_entry(&mut self) -> Result<(), ImageError> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(ImageError::TooManyEntries { limit: self.limits.max_entries });
        }
        Ok(())
    }

    fn member<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>, ext: Pending) -> Result<(), ImageError> {
        self.count_entry()?;
        let pax = match &ext.pax {
            Some(bytes) => parse_pax(bytes)?,
            None => Pax::default(),
        };
        let header = entry.header();
        let raw_name: Vec<u8> = match (&pax.path, &ext.long_name) {
            (Some(p), _) => p.clone(),
            (None, Some(l)) => l.strip_suffix(&[0]).unwrap_or(l).to_vec(),
            (None, None) => header.path_bytes().into_owned(),
        };
        let name = String::from_utf8_lossy(&raw_name).into_owned();
        let kind = header.entry_type();

        if kind == EntryType::GNUSparse || pax.sparse {
            return Err(ImageError::Unsupported { entry: name, what: "a sparse file".into() });
        }
        let size = entry.size();
        if let Some(declared) = pax.size.filter(|s| *s != size) {
            if declared > self.limits.max_entry_bytes {
                return Err(ImageError::EntryTooLarge {
                    entry: name,
                    size: declared,
                    limit: self.limits.max_entry_bytes,
                });
            }
            return Err(malformed(format!("entry {name:?}: pax size {declared} disagrees with header size {size}")));
        }
        if size > self.limits.max_entry_bytes {
            return Err(ImageError::EntryTooLarge { entry: name, size, limit: self.limits.max_entry_bytes });
        }
        let total = self.bytes.saturating_add(size);
        if total > self.limits.max_total_bytes {
            return Err(ImageError::LayerTooLarge { entry: name, total, limit: self.limits.max_total_bytes });
        }
        self.bytes = total;

        let forbidden = |kind| Err(ImageError::ForbiddenEntry { entry: name.clone(), kind });
        match kind {
            EntryType::Char => return forbidden("character device"),
            EntryType::Block => return forbidden("block device"),
            EntryType::Fifo => return forbidden("fifo"),
            EntryType::Regular
            | EntryType::Continuous
            | EntryType::Directory
            | EntryType::Symlink
            | EntryType::Link => {}
            other => {
                let what = format!("entry type {:?}", other.as_byte() as char);
                return Err(ImageError::Unsupported { entry: name, what });
            }
        }

        let bad_header = |field: &str, e: io::Error| malformed(format!("entry {name:?}: bad {field}: {e}"));
        let id = |v: u64, field: &str| {
            u32::try_from(v).map_err(|_| malformed(format!("entry {name:?}: {field} {v} is out of range")))
        };
        let old = header.as_old();
        let meta = Meta {
            mode: numeric(&old.mode, || header.mode().map(u64::from)).map_err(|e| bad_header("mode", e))? as u32
                & 0o7777,
            uid: id(
                pax.uid.map_or_else(|| numeric(&old.uid, || header.uid()), Ok).map_err(|e| bad_header("uid", e))?,
                "uid",
            )?,
            gid: id(
                pax.gid.map_or_else(|| numeric(&old.gid, || header.gid()), Ok).map_err(|e| bad_header("gid", e))?,
                "gid",
            )?,
            mtime: match pax.mtime {
                Some(t) => t,
                None => {
                    let secs = numeric(&old.mtime, || header.mtime()).map_err(|e| bad_header("mtime", e))?;
                    Timestamp { sec: i64::try_from(secs).unwrap_or(i64::MAX), nsec: 0 }
                }
            },
        };
        let link: Option<Vec<u8>> = match (&pax.linkpath, &ext.long_link) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(l)) => Some(l.strip_suffix(&[0]).unwrap_or(l).to_vec()),
            (None, None) => header.link_name_bytes().map(|l| l.into_owned()),
        };

        if self.limits.build_context && raw_name.starts_with(b"/") {
            return Err(ImageError::unsafe_path(&name, "it is an absolute path"));
        }
        let parts = components(&raw_name, &name)?;
        // Old archives mark directories with a trailing slash on a regular entry.
        let is_dir = kind == EntryType::Directory || (kind == EntryType::Regular && raw_name.ends_with(b"/"));
        let Some((last, parents)) = parts.split_last() else {
            if is_dir {
                self.walker.dirs.insert(
                    Vec::new(),
                    DirMeta { mode: meta.mode, owner: Some((meta.uid, meta.gid)), mtime: Some(meta.mtime) },
                );
                return Ok(());
            }
            return Err(ImageError::unsafe_path(&name, "it names the snapshot root itself"));
        };

        if let Some(hidden) = last.strip_prefix(WHITEOUT_PREFIX) {
            if self.limits.build_context {
                return Err(ImageError::unsafe_path(&name, "whiteout names (.wh.*) have no place in a build context"));
            }
            return self.whiteout(&name, parents, last, hidden);
        }
        if is_dir {
            return self.directory(&name, &parts, &meta, &pax.xattrs);
        }
        match kind {
            EntryType::Symlink => {
                let target = link
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| malformed(format!("symlink {name:?} has no target")))?;
                if self.limits.build_context && !stays_inside(parents, &target) {
                    return Err(ImageError::unsafe_path(
                        &name,
                        format!("its symlink target {:?} leaves the archive", String::from_utf8_lossy(&target)),
                    ));
                }
                self.symlink(&name, parents, last, &target, &meta)
            }
            EntryType::Link => {
                let target = link.filter(|t| !t.is_empty()).ok_or_else(|| ImageError::BadHardlink {
                    entry: name.clone(),
                    target: String::new(),
                    reason: "is empty",
                })?;
                if self.limits.build_context && target.starts_with(b"/") {
                    return Err(ImageError::BadHardlink {
                        entry: name.clone(),
                        target: String::from_utf8_lossy(&target).into_owned(),
                        reason: "is an absolute path",
                    });
                }
                self.hardlink(&name, &parts, &target)
            }
            _ => self.file(entry, &name, parents, last, size, &meta, &pax.xattrs),
        }
    }

    /// Removes whatever has `name` in `dir` so an entry can take its place; a
    /// directory goes only if it is empty.
    fn clear(dir: BorrowedFd<'_>, name: &CStr, entry: &str) -> Result<(), ImageError> {
        let st = fs::stat_at(dir, name).map_err(|e| ImageError::entry(entry, "inspect existing entry", e))?;
        fs::unlink_at(dir, name, fs::is_dir(&st)).map_err(|e| ImageError::entry(entry, "replace existing entry", e))
    }

    #[expect(clippy::too_many_arguments, reason = "one call site; a struct would only rename the arguments")]
    fn file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        name: &str,
        parents: &[&[u8]],
        last: &[u8],
        size: u64,
        meta: &Meta,
        xattrs: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<(), ImageError> {
        let dir = self.walker.dir(parents, name)?;
        let cname = fs::cstring(last).map_err(|e| ImageError::entry(name, "create", e))?;
        let mut file = match fs::create_file_at(dir, &cname) {
            Ok(f) => f,
            Err(e) if errno(&e) == libc::EEXIST => {
                Self::clear(dir, &cname, name)?;
                fs::create_file_at(dir, &cname).map_err(|e| ImageError::entry(name, "create", e))?
            }
            Err(e) => return Err(ImageError::entry(name, "create", e)),
        };
        if self.buf.is_empty() && size > 0 {
            self.buf = vec![0; CHUNK];
        }
        let mut written = 0u64;
        while written < size {
            let want = (size - written).min(self.buf.len() as u64) as usize;
            let n = read_full(entry, &mut self.buf[..want]).map_err(|e| malformed(format!("reading {name:?}: {e}")))?;
            if n == 0 {
                return Err(malformed(format!("the archive ends inside {name:?}")));
            }
            file.write_all(&self.buf[..n]).map_err(|e| ImageError::entry(name, "write", e))?;
            written += n as u64;
        }
        apply_file_meta(&file, name, meta, xattrs)
    }

    fn directory(
        &mut self,
        name: &str,
        parts: &[&[u8]],
        meta: &Meta,
        xattrs: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<(), ImageError> {
        let Some((last, parents)) = parts.split_last() else {
            return Err(ImageError::unsafe_path(name, "it names the snapshot root itself"));
        };
        let dir = self.walker.dir(parents, name)?;
        let cname = fs::cstring(last).map_err(|e| ImageError::entry(name, "create", e))?;
        let mut opaque = false;
        match fs::mkdir_at(dir, &cname, 0o700) {
            Ok(()) => {}
            Err(e) if errno(&e) == libc::EEXIST => {
                let st = fs::stat_at(dir, &cname).map_err(|e| ImageError::entry(name, "inspect existing entry", e))?;
                if !fs::is_dir(&st) {
                    // A directory replacing this layer's whiteout of the same name
                    // must still hide what the lower layers had there.
                    opaque = fs::is_whiteout(&st);
                    fs::unlink_at(dir, &cname, false)
                        .map_err(|e| ImageError::entry(name, "replace existing entry", e))?;
                    fs::mkdir_at(dir, &cname, 0o700).map_err(|e| ImageError::entry(name, "create", e))?;
                }
            }
            Err(e) => return Err(ImageError::entry(name, "create", e)),
        }
        if opaque || !xattrs.is_empty() {
            let fd = fs::open_dir_at(dir, &cname).map_err(|e| ImageError::entry(name, "open", e))?;
            if opaque {
                fs::fsetxattr(fd.as_fd(), OPAQUE_XATTR, b"y").map_err(|e| ImageError::entry(name, "mark opaque", e))?;
            }
            set_xattrs(fd.as_fd(), name, xattrs)?;
        }
        self.walker.dirs.insert(
            join(parts),
            DirMeta { mode: meta.mode, owner: Some((meta.uid, meta.gid)), mtime: Some(meta.mtime) },
        );
        Ok(())
    }

    fn symlink(
        &mut self,
        name: &str,
        parents: &[&[u8]],
        last: &[u8],
        target: &[u8],
        meta: &Meta,
    ) -> Result<(), ImageError> {
        // The target text is only ever resolved inside the container's own root,
        // so any text is allowed; what matters is that nothing is written through it.
        let dir = self.walker.dir(parents, name)?;
        let cname = fs::cstring(last).map_err(|e| ImageError::entry(name, "create", e))?;
        let ctarget = fs::cstring(target).map_err(|e| ImageError::entry(name, "create symlink", e))?;
        match fs::symlink_at(&ctarget, dir, &cname) {
            Ok(()) => {}
            Err(e) if errno(&e) == libc::EEXIST => {
                Self::clear(dir, &cname, name)?;
                fs::symlink_at(&ctarget, dir, &cname).map_err(|e| ImageError::entry(name, "create symlink", e))?;
            }
            Err(e) => return Err(ImageError::entry(name, "create symlink", e)),
        }
        fs::chown_at(dir, &cname, meta.uid, meta.gid).map_err(|e| ImageError::entry(name, "chown", e))?;
        fs::utimens_at(dir, &cname, meta.mtime).map_err(|e| ImageError::entry(name, "set mtime", e))
    }

    fn hardlink(&mut self, name: &str, parts: &[&[u8]], target: &[u8]) -> Result<(), ImageError> {
        let target_name = String::from_utf8_lossy(target).into_owned();
        let bad = |reason| ImageError::BadHardlink { entry: name.to_string(), target: target_name.clone(), reason };
        let target_parts = match components(target, name) {
            Ok(p) => p,
            Err(_) => return Err(bad("leaves the snapshot")),
        };
        let Some((tlast, tparents)) = target_parts.split_last() else {
            return Err(bad("is the snapshot root"));
        };
        if target_parts == parts {
            return Err(bad("is the entry itself"));
        }
        let tdir = match self.walker.lookup(tparents) {
            Ok(fd) => fd,
            Err(e) if matches!(errno(&e), libc::ENOENT) => return Err(bad("does not exist in this layer")),
            Err(e) if matches!(errno(&e), libc::ELOOP | libc::ENOTDIR) => {
                return Err(bad("goes through a symlink or a non-directory"));
            }
            Err(e) => return Err(ImageError::entry(name, "look up hardlink target", e)),
        };
        let ctname = fs::cstring(tlast).map_err(|_| bad("contains a NUL byte"))?;
        let tst = match fs::stat_at(tdir.as_fd(), &ctname) {
            Ok(st) => st,
            Err(e) if errno(&e) == libc::ENOENT => return Err(bad("does not exist in this layer")),
            Err(e) => return Err(ImageError::entry(name, "look up hardlink target", e)),
        };
        // Linking a symlink links the symlink itself (no AT_SYMLINK_FOLLOW).
        if !matches!(fs::file_type(&tst), FileType::RegularFile | FileType::Symlink) {
            return Err(bad("is not a regular file"));
        }
        let Some((last, parents)) = parts.split_last() else {
            return Err(ImageError::unsafe_path(name, "it names the snapshot root itself"));
        };
        let dir = self.walker.dir(parents, name)?;
        let cname = fs::cstring(last).map_err(|e| ImageError::entry(name, "create hardlink", e))?;
        match fs::link_at(tdir.as_fd(), &ctname, dir, &cname) {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == libc::EEXIST => {
                let st = fs::stat_at(dir, &cname).map_err(|e| ImageError::entry(name, "inspect existing entry", e))?;
                if st.st_ino == tst.st_ino && st.st_dev == tst.st_dev {
                    return Ok(());
                }
                Self::clear(dir, &cname, name)?;
                fs::link_at(tdir.as_fd(), &ctname, dir, &cname)
                    .map_err(|e| ImageError::entry(name, "create hardlink", e))
            }
            Err(e) => Err(ImageError::entry(name, "create hardlink", e)),
        }
    }

    /// `dir/.wh.name` becomes a 0/0 character device `dir/name`;
    /// `dir/.wh..wh..opq` marks `dir` opaque.
    fn whiteout(&mut self, name: &str, parents: &[&[u8]], last: &[u8], hidden: &[u8]) -> Result<(), ImageError> {
        if last == OPAQUE_MARKER {
            let dir = self.walker.dir(parents, name)?;
            return fs::fsetxattr(dir, OPAQUE_XATTR, b"y").map_err(|e| ImageError::entry(name, "mark opaque", e));
        }
        if hidden.starts_with(WHITEOUT_PREFIX) {
            // Other `.wh..wh.` names are aufs bookkeeping with no meaning here.
            tracing::debug!(entry = ?name, "skipping aufs metadata entry");
            return Ok(());
        }
        if hidden.is_empty() || hidden == b"." || hidden == b".." {
            return Err(ImageError::unsafe_path(name, "it is a whiteout with no valid name"));
        }
        let dir = self.walker.dir(parents, name)?;
        let cname = fs::cstring(hidden).map_err(|e| ImageError::entry(name, "create whiteout", e))?;
        match fs::mknod_whiteout(dir, &cname) {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == libc::EEXIST => {
                // The OCI spec says a whiteout hides only lower layers. An entry of
                // this layer with the name already hides them, except a directory,
                // whose lower content must become hidden: mark it opaque.
                let st = fs::stat_at(dir, &cname).map_err(|e| ImageError::entry(name, "inspect existing entry", e))?;
                if fs::is_dir(&st) {
                    let fd = fs::open_dir_at(dir, &cname).map_err(|e| ImageError::entry(name, "open", e))?;
                    fs::fsetxattr(fd.as_fd(), OPAQUE_XATTR, b"y")
                        .map_err(|e| ImageError::entry(name, "mark opaque", e))?;
                }
                Ok(())
            }
            Err(e) => Err(ImageError::entry(name, "create whiteout", e)),
        }
    }

    /// Applies directory ownership, modes and times, deepest first. A directory a
    /// later entry replaced is skipped.
    fn finish_dirs(&mut self) -> Result<(), ImageError> {
        self.walker.cached = None;
        let dirs = std::mem::take(&mut self.walker.dirs);
        for (path, meta) in dirs.iter().rev() {
            let name = String::from_utf8_lossy(path).into_owned();
            let parts: Vec<&[u8]> = path.split(|b| *b == b'/').filter(|c| !c.is_empty()).collect();
            let fd = match self.walker.lookup(&parts) {
                Ok(fd) => fd,
                Err(e) if matches!(errno(&e), libc::ENOENT | libc::ELOOP | libc::ENOTDIR) => continue,
                Err(e) => return Err(ImageError::entry(&name, "open", e)),
            };
            if let Some((uid, gid)) = meta.owner {
                fs::fchown(fd.as_fd(), uid, gid).map_err(|e| ImageError::entry(&name, "chown", e))?;
            }
            fs::fchmod(fd.as_fd(), meta.mode).map_err(|e| ImageError::entry(&name, "chmod", e))?;
            if let Some(mtime) = meta.mtime {
                fs::futimens(fd.as_fd(), mtime).map_err(|e| ImageError::entry(&name, "set mtime", e))?;
            }
        }
        Ok(())
    }
}

/// Owner first (chown clears setuid bits and file capabilities), then mode and
/// xattrs, then the time.
fn apply_file_meta(file: &File, name: &str, meta: &Meta, xattrs: &[(Vec<u8>, Vec<u8>)]) -> Result<(), ImageError> {
    let fd = file.as_fd();
    fs::fchown(fd, meta.uid, meta.gid).map_err(|e| ImageError::entry(name, "chown", e))?;
    fs::fchmod(fd, meta.mode).map_err(|e| ImageError::entry(name, "chmod", e))?;
    set_xattrs(fd, name, xattrs)?;
    fs::futimens(fd, meta.mtime).map_err(|e| ImageError::entry(name, "set mtime", e))
}

/// Only `user.*` and file capabilities are restored: `trusted.*` (overlayfs's own
/// namespace) or `security.selinux` from an archive could forge overlay state or
/// labels.
fn set_xattrs(fd: BorrowedFd<'_>, name: &str, xattrs: &[(Vec<u8>, Vec<u8>)]) -> Result<(), ImageError> {
    for (key, value) in xattrs {
        if !(key.starts_with(b"user.") || key == b"security.capability") {
            tracing::debug!(entry = ?name, xattr = %String::from_utf8_lossy(key), "skipping xattr");
            continue;
        }
        let ckey = fs::cstring(key).map_err(|e| ImageError::entry(name, "set xattr", e))?;
        fs::fsetxattr(fd, &ckey, value).map_err(|e| ImageError::entry(name, "set xattr", e))?;
    }
    Ok(())
}

/// After the end-of-archive marker only zero padding may follow: data hidden
/// there is what another tar reader might see as more entries.
fn check_trailer(reader: &mut ChunkReader) -> Result<(), ImageError> {
    let mut seen = 0u64;
    let mut buf = [0u8; 64 << 10];
    loop {
        let n = reader.read(&mut buf).map_err(|e| malformed(e.to_string()))?;
        if n == 0 {
            return Ok(());
        }
        if buf[..n].iter().any(|b| *b != 0) {
            return Err(malformed("data follows the end-of-archive marker"));
        }
        seen += n as u64;
        if seen > MAX_TRAILER {
            return Err(malformed(format!("more than {MAX_TRAILER} bytes of padding follow the end of the archive")));
        }
    }
}

#[cfg(test)]
mod context_tests {
    use super::stays_inside;

    #[test]
    fn symlink_targets_of_a_build_context_stay_under_its_root() {
        let at = |p: &[&'static str], t: &str| {
            stays_inside(&p.iter().map(|s| s.as_bytes()).collect::<Vec<_>>(), t.as_bytes())
        };
        assert!(at(&[], "Dockerfile"));
        assert!(at(&["a", "b"], "../../c"));
        assert!(at(&["a"], "./b/../c"));
        assert!(!at(&[], "../x"));
        assert!(!at(&["a"], "../../x"));
        assert!(at(&["a", "b"], "c/../../../x"));
        assert!(!at(&["a", "b"], "c/../../../../x"));
        assert!(!at(&[], "/etc/passwd"));
    }
}
