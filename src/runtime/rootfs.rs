//! A container's root filesystem: an overlay of read-only layer snapshots plus a
//! private upper directory.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

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
    let c = |s: &[u8]| CString::new(s).map_err(|_| RuntimeError::InvalidSpec("a path holds a NUL byte".into()));
    let (src, tgt, fs, data) = (c(b"overlay")?, c(target.as_os_str().as_bytes())?, c(b"overlay")?, c(opts.as_bytes())?);
    // SAFETY: all four pointers are NUL-terminated strings that outlive the call.
    let rc = unsafe { libc::mount(src.as_ptr(), tgt.as_ptr(), fs.as_ptr(), libc::MS_NODEV, data.as_ptr().cast()) };
    if rc != 0 {
        return Err(PathError::new("mount overlay", target, std::io::Error::last_os_error()).into());
    }
    Ok(())
}

/// Unmounts `target` (lazily, so a busy mount still goes); not mounted is fine.
pub fn unmount(target: &Path) -> Result<(), RuntimeError> {
    let Ok(t) = CString::new(target.as_os_str().as_bytes()) else { return Ok(()) };
    // SAFETY: `t` is a NUL-terminated path; MNT_DETACH only affects that mount.
    let rc = unsafe { libc::umount2(t.as_ptr(), libc::MNT_DETACH) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if !matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOENT)) {
            return Err(PathError::new("unmount", target, e).into());
        }
    }
    Ok(())
}

/// Every lowerdir of every overlay mounted on this host's mount namespace (from
/// /proc/self/mountinfo): the snapshots containers are using right now.
pub fn mounted_lowers() -> std::collections::HashSet<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    lowers_in_mountinfo(&info)
}

fn lowers_in_mountinfo(info: &str) -> std::collections::HashSet<PathBuf> {
    let mut out = std::collections::HashSet::new();
    for line in info.lines() {
        // `<id> <parent> <dev> <root> <mount point> <options> [optional...] - <fs type> <source> <super options>`
        let Some((_, tail)) = line.split_once(" - ") else { continue };
        let mut fields = tail.split(' ');
        if fields.next() != Some("overlay") {
            continue;
        }
        let Some(options) = fields.nth(1) else { continue };
        for opt in options.split(',') {
            if let Some(list) = opt.strip_prefix("lowerdir=") {
                // berth's overlay paths never hold `:`, `,` or whitespace (mount_overlay
                // refuses them); mountinfo escapes a space as \040.
                out.extend(list.split(':').filter(|p| !p.is_empty()).map(|p| PathBuf::from(p.replace("\\040", " "))));
            }
        }
    }
    out
}

/// Whether something is mounted at `target` (from /proc/self/mountinfo).
pub fn is_mounted(target: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let t = target.display().to_string();
    info.lines().any(|l| l.split(' ').nth(4) == Some(t.as_str()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn lowers_come_from_overlay_lines_only() {
        let info = "36 25 0:31 / /run/c1/rootfs rw,relatime shared:1 - overlay overlay rw,lowerdir=/s/a:/s/b,upperdir=/c1/upper,workdir=/c1/work\n\
                    37 25 0:32 / /data rw - ext4 /dev/vda rw,lowerdir=/not/overlay\n\
                    38 25 0:33 / /run/c2/rootfs rw - overlay overlay rw,lowerdir=/s/b,upperdir=/c2/u,workdir=/c2/w\n";
        let mut got: Vec<_> = super::lowers_in_mountinfo(info).into_iter().collect();
        got.sort();
        assert_eq!(got, [std::path::PathBuf::from("/s/a"), "/s/b".into()]);
    }
}
