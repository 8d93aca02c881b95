//! Thin wrappers over the `*at` system calls the unpacker is built on, through
//! `rustix` (no `unsafe` here; see adr/011).
//!
//! Every call takes a directory fd and a single path component and never follows
//! a symlink in that component (`O_NOFOLLOW`, `AT_SYMLINK_NOFOLLOW`, or a call
//! that does not follow by definition such as `unlinkat`, `symlinkat`, `linkat`
//! without `AT_SYMLINK_FOLLOW`). Names must not contain `/`: callers walk one
//! component at a time so the kernel never resolves a path on our behalf.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{AtFlags, CWD, Dir, FileType, Gid, Mode, OFlags, RenameFlags, Timespec, Timestamps, Uid, XattrFlags};

/// What `lstat` says about an entry.
pub(crate) type Stat = rustix::fs::Stat;

/// Seconds and nanoseconds since the epoch, as `utimensat` takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Timestamp {
    pub sec: i64,
    pub nsec: u32,
}

/// A path component or link target as a C string; a NUL byte inside is refused.
pub(crate) fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name contains a NUL byte"))
}

/// Opens a directory of berth's own by path (the snapshot root).
pub(crate) fn open_dir_path(path: &Path) -> io::Result<OwnedFd> {
    let c = cstring(path.as_os_str().as_bytes())?;
    Ok(rustix::fs::open(c.as_c_str(), OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?)
}

/// Opens `name` in `dir` as a directory; fails with `ELOOP`/`ENOTDIR` on a symlink
/// or anything else that is not a real directory.
pub(crate) fn open_dir_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    Ok(rustix::fs::openat(dir, name, flags, Mode::empty())?)
}

pub(crate) fn mkdir_at(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<()> {
    Ok(rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(mode))?)
}

/// Creates a new regular file; fails with `EEXIST` if anything (even a dangling
/// symlink) already has the name.
pub(crate) fn create_file_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<File> {
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    Ok(File::from(rustix::fs::openat(dir, name, flags, Mode::from_raw_mode(0o600))?))
}

pub(crate) fn symlink_at(target: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    Ok(rustix::fs::symlinkat(target, dir, name)?)
}

/// A hard link; without `AT_SYMLINK_FOLLOW` a symlink source is linked itself,
/// never its target.
pub(crate) fn link_at(from_dir: BorrowedFd<'_>, from: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    Ok(rustix::fs::linkat(from_dir, from, dir, name, AtFlags::empty())?)
}

pub(crate) fn unlink_at(dir: BorrowedFd<'_>, name: &CStr, is_dir: bool) -> io::Result<()> {
    let flags = if is_dir { AtFlags::REMOVEDIR } else { AtFlags::empty() };
    Ok(rustix::fs::unlinkat(dir, name, flags)?)
}

/// `lstat` relative to `dir`.
pub(crate) fn stat_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Stat> {
    Ok(rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?)
}

pub(crate) fn file_type(st: &Stat) -> FileType {
    FileType::from_raw_mode(st.st_mode)
}

pub(crate) fn is_dir(st: &Stat) -> bool {
    file_type(st) == FileType::Directory
}

/// The 0/0 character device overlayfs reads as "deleted in a lower layer".
pub(crate) fn is_whiteout(st: &Stat) -> bool {
    file_type(st) == FileType::CharacterDevice && st.st_rdev == 0
}

pub(crate) fn fchown(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> io::Result<()> {
    Ok(rustix::fs::fchown(fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))?)
}

pub(crate) fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    Ok(rustix::fs::fchmod(fd, Mode::from_raw_mode(mode))?)
}

/// `lchown` relative to `dir` (for symlinks, which cannot be opened).
pub(crate) fn chown_at(dir: BorrowedFd<'_>, name: &CStr, uid: u32, gid: u32) -> io::Result<()> {
    let (uid, gid) = (Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)));
    Ok(rustix::fs::chownat(dir, name, uid, gid, AtFlags::SYMLINK_NOFOLLOW)?)
}

/// The access time is left alone (`UTIME_OMIT`), the modification time set.
fn times(mtime: Timestamp) -> Timestamps {
    Timestamps {
        last_access: Timespec { tv_sec: 0, tv_nsec: rustix::fs::UTIME_OMIT },
        last_modification: Timespec { tv_sec: mtime.sec, tv_nsec: mtime.nsec.into() },
    }
}

pub(crate) fn futimens(fd: BorrowedFd<'_>, mtime: Timestamp) -> io::Result<()> {
    Ok(rustix::fs::futimens(fd, &times(mtime))?)
}

/// Sets the mtime of `name` in `dir` without following it (for symlinks).
pub(crate) fn utimens_at(dir: BorrowedFd<'_>, name: &CStr, mtime: Timestamp) -> io::Result<()> {
    Ok(rustix::fs::utimensat(dir, name, &times(mtime), AtFlags::SYMLINK_NOFOLLOW)?)
}

pub(crate) fn fsetxattr(fd: BorrowedFd<'_>, name: &CStr, value: &[u8]) -> io::Result<()> {
    Ok(rustix::fs::fsetxattr(fd, name, value, XattrFlags::empty())?)
}

pub(crate) fn fremovexattr(fd: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    Ok(rustix::fs::fremovexattr(fd, name)?)
}

/// Creates an overlayfs whiteout (char device 0/0). This is the only `mknod` the
/// unpacker ever makes; device entries from archives are refused.
pub(crate) fn mknod_whiteout(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    Ok(rustix::fs::mknodat(dir, name, FileType::CharacterDevice, Mode::empty(), 0)?)
}

/// Flushes the filesystem holding `fd` (one call for a whole snapshot instead of
/// an fsync per file).
pub(crate) fn syncfs(fd: BorrowedFd<'_>) -> io::Result<()> {
    Ok(rustix::fs::syncfs(fd)?)
}

/// Renames `from` to `to`, failing with `EEXIST` instead of replacing `to`.
pub(crate) fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    Ok(rustix::fs::renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE)?)
}

/// The names in an open directory, without `.` and `..`.
pub(crate) fn read_dir_names(dir: BorrowedFd<'_>) -> io::Result<Vec<CString>> {
    // Reads through a descriptor of its own (an `openat(dir, ".")`), so the
    // listing starts at the beginning whatever `dir` has read before.
    let mut names = Vec::new();
    for entry in Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name != c"." && name != c".." {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

/// Every extended attribute of an open file or directory, as (name, value).
pub(crate) fn fxattrs(fd: BorrowedFd<'_>) -> io::Result<Vec<(CString, Vec<u8>)>> {
    let mut list = vec![0u8; rustix::fs::flistxattr_query(fd)?];
    let size = rustix::fs::flistxattr(fd, &mut list[..])?;
    list.truncate(size);
    let mut out = Vec::new();
    for name in list.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = cstring(name)?;
        let mut value = vec![0u8; rustix::fs::fgetxattr_query(fd, name.as_c_str())?];
        let len = rustix::fs::fgetxattr(fd, name.as_c_str(), &mut value[..])?;
        value.truncate(len);
        out.push((name, value));
    }
    Ok(out)
}

/// Removes `name` from `dir`, a directory with everything in it, never following
/// a symlink; a name that is not there is fine.
pub(crate) fn remove_all_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    let st = match stat_at(dir, name) {
        Ok(st) => st,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if is_dir(&st) {
        let sub = open_dir_at(dir, name)?;
        for child in read_dir_names(sub.as_fd())? {
            remove_all_at(sub.as_fd(), &child)?;
        }
    }
    unlink_at(dir, name, is_dir(&st))
}
