//! Thin, safe wrappers over the `*at` system calls the unpacker is built on.
//!
//! Every call takes a directory fd and a single path component and never follows
//! a symlink in that component (`O_NOFOLLOW`, `AT_SYMLINK_NOFOLLOW`, or a call
//! that does not follow by definition such as `unlinkat`, `symlinkat`, `linkat`
//! without `AT_SYMLINK_FOLLOW`). Names must not contain `/`: callers walk one
//! component at a time so the kernel never resolves a path on our behalf.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Seconds and nanoseconds since the epoch, as `utimensat` takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Timestamp {
    pub sec: i64,
    pub nsec: u32,
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

fn check_fd(ret: libc::c_int) -> io::Result<OwnedFd> {
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(ret) })
}

/// A path component or link target as a C string; a NUL byte inside is refused.
pub(crate) fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name contains a NUL byte"))
}

/// Opens a directory of berth's own by path (the snapshot root).
pub(crate) fn open_dir_path(path: &Path) -> io::Result<OwnedFd> {
    let c = cstring(path.as_os_str().as_bytes())?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    check_fd(unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) })
}

/// Opens `name` in `dir` as a directory; fails with `ELOOP`/`ENOTDIR` on a symlink
/// or anything else that is not a real directory.
pub(crate) fn open_dir_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<OwnedFd> {
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: `dir` is an open descriptor and `name` a valid C string for the call.
    check_fd(unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags) })
}

pub(crate) fn mkdir_at(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: `dir` is an open descriptor and `name` a valid C string for the call.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode as libc::mode_t) })
}

/// Creates a new regular file; fails with `EEXIST` if anything (even a dangling
/// symlink) already has the name.
pub(crate) fn create_file_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<File> {
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: `dir` is an open descriptor and `name` a valid C string for the call.
    let fd = check_fd(unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags, 0o600 as libc::c_uint) })?;
    Ok(File::from(fd))
}

pub(crate) fn symlink_at(target: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: both strings are valid for the call and `dir` is an open descriptor.
    check(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) })
}

/// A hard link; without `AT_SYMLINK_FOLLOW` a symlink source is linked itself,
/// never its target.
pub(crate) fn link_at(from_dir: BorrowedFd<'_>, from: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: both descriptors are open and both strings valid for the call.
    check(unsafe { libc::linkat(from_dir.as_raw_fd(), from.as_ptr(), dir.as_raw_fd(), name.as_ptr(), 0) })
}

pub(crate) fn unlink_at(dir: BorrowedFd<'_>, name: &CStr, is_dir: bool) -> io::Result<()> {
    let flags = if is_dir { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: `dir` is an open descriptor and `name` a valid C string for the call.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) })
}

/// `lstat` relative to `dir`.
pub(crate) fn stat_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `st` is writable memory of the right size; the kernel fills it on success.
    check(unsafe { libc::fstatat(dir.as_raw_fd(), name.as_ptr(), st.as_mut_ptr(), libc::AT_SYMLINK_NOFOLLOW) })?;
    // SAFETY: fstatat succeeded, so every field of `st` was written.
    Ok(unsafe { st.assume_init() })
}

pub(crate) fn is_dir(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

/// The 0/0 character device overlayfs reads as "deleted in a lower layer".
pub(crate) fn is_whiteout(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFCHR && st.st_rdev == 0
}

pub(crate) fn fchown(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: `fd` is an open descriptor.
    check(unsafe { libc::fchown(fd.as_raw_fd(), uid, gid) })
}

pub(crate) fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    // SAFETY: `fd` is an open descriptor.
    check(unsafe { libc::fchmod(fd.as_raw_fd(), mode as libc::mode_t) })
}

/// `lchown` relative to `dir` (for symlinks, which cannot be opened).
pub(crate) fn chown_at(dir: BorrowedFd<'_>, name: &CStr, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: `dir` is an open descriptor and `name` a valid C string for the call.
    check(unsafe { libc::fchownat(dir.as_raw_fd(), name.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW) })
}

fn times(mtime: Timestamp) -> [libc::timespec; 2] {
    let keep_atime = libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT };
    let m = libc::timespec { tv_sec: mtime.sec as libc::time_t, tv_nsec: mtime.nsec as libc::c_long };
    [keep_atime, m]
}

pub(crate) fn futimens(fd: BorrowedFd<'_>, mtime: Timestamp) -> io::Result<()> {
    let ts = times(mtime);
    // SAFETY: `ts` is two valid timespecs and `fd` an open descriptor.
    check(unsafe { libc::futimens(fd.as_raw_fd(), ts.as_ptr()) })
}

/// Sets the mtime of `name` in `dir` without following it (for symlinks).
pub(crate) fn utimens_at(dir: BorrowedFd<'_>, name: &CStr, mtime: Timestamp) -> io::Result<()> {
    let ts = times(mtime);
    // SAFETY: `ts` is two valid timespecs, `dir` an open descriptor, `name` a valid C string.
    check(unsafe { libc::utimensat(dir.as_raw_fd(), name.as_ptr(), ts.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) })
}

pub(crate) fn fsetxattr(fd: BorrowedFd<'_>, name: &CStr, value: &[u8]) -> io::Result<()> {
    // SAFETY: `name` is a valid C string, `value` a readable buffer of the given length.
    check(unsafe { libc::fsetxattr(fd.as_raw_fd(), name.as_ptr(), value.as_ptr().cast(), value.len(), 0) })
}

pub(crate) fn fremovexattr(fd: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: `name` is a valid C string and `fd` an open descriptor.
    check(unsafe { libc::fremovexattr(fd.as_raw_fd(), name.as_ptr()) })
}

/// Creates an overlayfs whiteout (char device 0/0). This is the only `mknod` the
/// unpacker ever makes; device entries from archives are refused.
pub(crate) fn mknod_whiteout(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: `dir` is an open descriptor and `name` a valid C string for the call.
    check(unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), libc::S_IFCHR, 0) })
}

/// Flushes the filesystem holding `fd` (one call for a whole snapshot instead of
/// an fsync per file).
pub(crate) fn syncfs(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: `fd` is an open descriptor.
    check(unsafe { libc::syncfs(fd.as_raw_fd()) })
}

/// Renames `from` to `to`, failing with `EEXIST` instead of replacing `to`.
pub(crate) fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    let (f, t) = (cstring(from.as_os_str().as_bytes())?, cstring(to.as_os_str().as_bytes())?);
    // SAFETY: both strings are valid for the call; AT_FDCWD makes them ordinary paths.
    check(unsafe { libc::renameat2(libc::AT_FDCWD, f.as_ptr(), libc::AT_FDCWD, t.as_ptr(), libc::RENAME_NOREPLACE) })
}

/// The names in an open directory, without `.` and `..`.
pub(crate) fn read_dir_names(dir: BorrowedFd<'_>) -> io::Result<Vec<CString>> {
    // SAFETY: `dir` is an open descriptor; the duplicate belongs to the DIR stream
    // from here on and `closedir` closes it.
    let dup = unsafe { libc::fcntl(dir.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `dup` is a fresh descriptor of a directory opened for reading.
    let stream = unsafe { libc::fdopendir(dup) };
    if stream.is_null() {
        let e = io::Error::last_os_error();
        // SAFETY: fdopendir failed, so `dup` is still ours to close.
        unsafe { libc::close(dup) };
        return Err(e);
    }
    // The duplicate shares the file offset: start from the beginning.
    // SAFETY: `stream` is a valid DIR pointer until closedir below.
    unsafe { libc::rewinddir(stream) };
    let mut names = Vec::new();
    let result = loop {
        // SAFETY: errno is thread-local; zeroing it tells end-of-stream from an error.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: `stream` is valid; the entry it returns lives until the next call.
        let entry = unsafe { libc::readdir64(stream) };
        if entry.is_null() {
            let e = io::Error::last_os_error();
            break if e.raw_os_error().unwrap_or(0) == 0 { Ok(()) } else { Err(e) };
        }
        // SAFETY: `d_name` is a NUL-terminated string inside the entry.
        let name = unsafe { CStr::from_ptr((*entry).d_name.as_ptr()) };
        if name != c"." && name != c".." {
            names.push(name.to_owned());
        }
    };
    // SAFETY: `stream` came from fdopendir and is closed exactly once.
    unsafe { libc::closedir(stream) };
    result.map(|()| names)
}

/// Every extended attribute of an open file or directory, as (name, value).
pub(crate) fn fxattrs(fd: BorrowedFd<'_>) -> io::Result<Vec<(CString, Vec<u8>)>> {
    // SAFETY: a null buffer of size 0 asks for the size the list needs.
    let size = unsafe { libc::flistxattr(fd.as_raw_fd(), std::ptr::null_mut(), 0) };
    if size < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut list = vec![0u8; size as usize];
    // SAFETY: `list` is writable for its whole length.
    let size = unsafe { libc::flistxattr(fd.as_raw_fd(), list.as_mut_ptr().cast(), list.len()) };
    if size < 0 {
        return Err(io::Error::last_os_error());
    }
    list.truncate(size as usize);
    let mut out = Vec::new();
    for name in list.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = cstring(name)?;
        // SAFETY: as above, a size query for this attribute.
        let len = unsafe { libc::fgetxattr(fd.as_raw_fd(), name.as_ptr(), std::ptr::null_mut(), 0) };
        if len < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut value = vec![0u8; len as usize];
        // SAFETY: `value` is writable for its whole length.
        let len = unsafe { libc::fgetxattr(fd.as_raw_fd(), name.as_ptr(), value.as_mut_ptr().cast(), value.len()) };
        if len < 0 {
            return Err(io::Error::last_os_error());
        }
        value.truncate(len as usize);
        out.push((name, value));
    }
    Ok(out)
}

/// Removes `name` from `dir`, a directory with everything in it, never following
/// a symlink; a name that is not there is fine.
pub(crate) fn remove_all_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    let st = match stat_at(dir, name) {
        Ok(st) => st,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
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
