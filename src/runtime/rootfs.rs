//! A container's root filesystem: an overlay of read-only layer snapshots plus a
//! private upper directory.

use std::collections::HashSet;
use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use rustix::io::Errno;
use rustix::mount::{MountFlags, UnmountFlags};

use super::RuntimeError;
use crate::error::PathError;

/// The kernel takes mount options up to a page.
const MAX_OPTIONS: usize = 4000;

/// Bytes of the options the `lowerdir` paths may take; the rest of the page is
/// left for `upperdir` and `workdir`. Images whose layers need more are mounted
/// with their bottom layers flattened into one snapshot
/// ([`crate::images::SnapshotStore::lowers`]).
pub const LOWERDIR_BUDGET: usize = 3000;

/// Mounts `lowers` (topmost first) with `upper`/`work` at `target`.
pub fn mount_overlay(lowers: &[PathBuf], upper: &Path, work: &Path, target: &Path) -> Result<(), RuntimeError> {
    if lowers.is_empty() {
        return Err(RuntimeError::InvalidSpec("an image needs at least one layer".into()));
    }
    let mut paths: Vec<&Path> = lowers.iter().map(PathBuf::as_path).collect();
    paths.extend([upper, work]);
    if let Some(bad) = paths.iter().find(|p| p.to_str().is_none_or(|s| s.contains([':', ',', '\n']))) {
        return Err(RuntimeError::InvalidSpec(format!("{} cannot be an overlay path", bad.display())));
    }
    let lower = lowers.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(":");
    let opts = format!("lowerdir={lower},upperdir={},workdir={}", upper.display(), work.display());
    if opts.len() > MAX_OPTIONS {
        return Err(RuntimeError::InvalidSpec(format!(
            "{} layers with these paths are more than one overlay mount takes (flatten them first)",
            lowers.len()
        )));
    }
    for d in [upper, work, target] {
        std::fs::create_dir_all(d).map_err(|e| PathError::new("create", d, e))?;
    }
    let data = CString::new(opts).map_err(|_| RuntimeError::InvalidSpec("a path holds a NUL byte".into()))?;
    rustix::mount::mount("overlay", target, "overlay", MountFlags::NODEV, data.as_c_str())
        .map_err(|e| PathError::new("mount overlay", target, e.into()))?;
    Ok(())
}

/// Unmounts `target` (lazily, so a busy mount still goes); not mounted is fine.
pub fn unmount(target: &Path) -> Result<(), RuntimeError> {
    match rustix::mount::unmount(target, UnmountFlags::DETACH) {
        Ok(()) | Err(Errno::INVAL | Errno::NOENT) => Ok(()),
        Err(e) => Err(PathError::new("unmount", target, e.into()).into()),
    }
}

/// Every lowerdir of every overlay mounted on this host's mount namespace (from
/// /proc/self/mountinfo): the snapshots containers are using right now.
pub fn mounted_lowers() -> HashSet<PathBuf> {
    lowers_in_mountinfo(&read_mountinfo())
}

/// /proc/self/mountinfo as bytes: paths need not be UTF-8, and one mount with
/// such a path must not hide all the others.
fn read_mountinfo() -> Vec<u8> {
    std::fs::read("/proc/self/mountinfo").unwrap_or_default()
}

/// One line of mountinfo:
/// `<id> <parent> <dev> <root> <mount point> <options> [optional...] - <fs type> <source> <super options>`.
struct MountLine<'a> {
    /// Still escaped; see [`unescape`].
    mount_point: &'a [u8],
    fs_type: &'a [u8],
    super_options: &'a [u8],
}

fn mount_lines(info: &[u8]) -> impl Iterator<Item = MountLine<'_>> {
    info.split(|b| *b == b'\n').filter_map(|line| {
        let mount_point = line.split(|b| *b == b' ').nth(4)?;
        let sep = line.windows(3).position(|w| w == b" - ")?;
        let mut tail = line[sep + 3..].split(|b| *b == b' ');
        let fs_type = tail.next()?;
        let super_options = tail.nth(1)?;
        Some(MountLine { mount_point, fs_type, super_options })
    })
}

/// Undoes the kernel's escapes in a mountinfo field: a space, tab, newline,
/// backslash (and, in options, a comma or `=`) are written as `\` and three octal
/// digits, `\040` for a space.
fn unescape(field: &[u8]) -> PathBuf {
    let octal = |b: &u8| (b'0'..=b'7').contains(b);
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        match field.get(i..i + 4) {
            Some([b'\\', a, b, c]) if [a, b, c].into_iter().all(octal) && *a <= b'3' => {
                out.push((a - b'0') << 6 | (b - b'0') << 3 | (c - b'0'));
                i += 4;
            }
            _ => {
                out.push(field[i]);
                i += 1;
            }
        }
    }
    PathBuf::from(OsString::from_vec(out))
}

fn lowers_in_mountinfo(info: &[u8]) -> HashSet<PathBuf> {
    let mut out = HashSet::new();
    for m in mount_lines(info).filter(|m| m.fs_type == b"overlay") {
        for opt in m.super_options.split(|b| *b == b',') {
            if let Some(list) = opt.strip_prefix(b"lowerdir=") {
                // berth's overlay paths never hold `:` or `,` (mount_overlay refuses
                // them), and the kernel escapes a `,` inside a path.
                out.extend(list.split(|b| *b == b':').filter(|p| !p.is_empty()).map(unescape));
            }
        }
    }
    out
}

/// Whether something is mounted at `target` (from /proc/self/mountinfo).
pub fn is_mounted(target: &Path) -> bool {
    mounted_at(&read_mountinfo(), target)
}

fn mounted_at(info: &[u8], target: &Path) -> bool {
    mount_lines(info).any(|m| unescape(m.mount_point) == target)
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;

    #[test]
    fn lowers_come_from_overlay_lines_only() {
        let info = b"36 25 0:31 / /run/c1/rootfs rw,relatime shared:1 - overlay overlay rw,lowerdir=/s/a:/s/b,upperdir=/c1/upper,workdir=/c1/work\n\
                    37 25 0:32 / /data rw - ext4 /dev/vda rw,lowerdir=/not/overlay\n\
                    38 25 0:33 / /run/c2/rootfs rw - overlay overlay rw,lowerdir=/s/b,upperdir=/c2/u,workdir=/c2/w\n";
        let mut got: Vec<_> = lowers_in_mountinfo(info).into_iter().collect();
        got.sort();
        assert_eq!(got, [PathBuf::from("/s/a"), "/s/b".into()]);
    }

    #[test]
    fn escaped_paths_are_read_back_as_they_are() {
        let info = b"40 25 0:40 / /var/lib/berth/my\\040app/rootfs rw - overlay overlay rw,lowerdir=/s/with\\040space:/s/tab\\011and\\134slash,upperdir=/u,workdir=/w\n\
                     41 25 0:41 / /mnt/caf\xc3\xa9\\012x rw - tmpfs tmpfs rw\n";
        assert!(mounted_at(info, Path::new("/var/lib/berth/my app/rootfs")));
        assert!(!mounted_at(info, Path::new("/var/lib/berth/my\\040app/rootfs")));
        assert!(!mounted_at(info, Path::new("/var/lib/berth/my")));
        assert!(mounted_at(info, Path::new("/mnt/café\nx")));
        let got = lowers_in_mountinfo(info);
        assert_eq!(got, [PathBuf::from("/s/with space"), PathBuf::from("/s/tab\tand\\slash")].into());
    }

    #[test]
    fn unescape_leaves_what_is_not_an_escape() {
        assert_eq!(unescape(b"/a\\040b"), Path::new("/a b"));
        assert_eq!(unescape(b"/a\\0"), Path::new("/a\\0"), "too short");
        assert_eq!(unescape(b"/a\\09x"), Path::new("/a\\09x"), "not octal");
        assert_eq!(unescape(b"/a\\777"), Path::new("/a\\777"), "above one byte");
        assert_eq!(unescape(b"/a\\134040"), Path::new("/a\\040"), "an escaped backslash is not unescaped twice");
    }

    /// A real mount whose path holds a space, read back from the kernel's mountinfo.
    #[test]
    fn a_mount_point_with_a_space_is_mounted() {
        if !rustix::process::geteuid().is_root() {
            assert!(std::env::var("CI").as_deref() != Ok("true"), "mounting needs root under CI");
            eprintln!("SKIPPED: mounting needs root");
            return;
        }
        let dir = std::env::temp_dir().join(crate::ids::new_id("mnt test"));
        let target = dir.join("root fs");
        std::fs::create_dir_all(&target).unwrap();
        struct Cleanup(PathBuf, PathBuf);
        impl Drop for Cleanup {
            fn drop(&mut self) {
                let _ = unmount(&self.1);
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
        let _cleanup = Cleanup(dir.clone(), target.clone());
        assert!(!is_mounted(&target));
        rustix::mount::mount("tmpfs", &target, "tmpfs", MountFlags::empty(), None).unwrap();
        assert!(is_mounted(&target), "{} is mounted", target.display());
        unmount(&target).unwrap();
        assert!(!is_mounted(&target));
        unmount(&target).expect("unmounting what is not mounted is fine");
    }
}
