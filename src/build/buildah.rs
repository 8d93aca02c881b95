//! buildah's command lines: storage of its own under the state dir (`vfs`, which
//! works on any filesystem and needs no fuse), `chroot` isolation (no user
//! namespaces, no runtime), and a signature policy of berth's so that a host without
//! `/etc/containers/policy.json` builds too. Every base image reaches buildah as a
//! local OCI layout, so it never asks a registry for anything.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Where buildah keeps its state, and which buildah.
#[derive(Debug, Clone)]
pub struct Buildah {
    pub program: PathBuf,
    /// `--root`: images and layers (`<data_dir>/builds/storage`).
    pub root: PathBuf,
    /// `--runroot`: its locks and mounts (`<run_dir>/builds`).
    pub runroot: PathBuf,
    /// A signature policy that accepts the local layouts berth hands it.
    pub policy: PathBuf,
}

/// The policy file's content: the only images buildah reads are layouts berth wrote.
pub const POLICY: &str = r#"{"default":[{"type":"insecureAcceptAnything"}]}"#;

/// The environment every buildah command gets.
pub fn env() -> Vec<(String, String)> {
    vec![("BUILDAH_ISOLATION".into(), "chroot".into()), ("STORAGE_DRIVER".into(), "vfs".into())]
}

/// Where `configured` (a name on `PATH` or a path) is, if it is an executable file.
pub fn locate(configured: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let runnable = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if configured.contains('/') {
        let p = PathBuf::from(configured);
        return runnable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path).map(|d| d.join(configured)).find(|p| runnable(p))
}

/// `buildah version 1.28.2 (image-spec …)` → `1.28.2`.
pub fn parse_version(line: &str) -> Option<String> {
    let v = line.strip_prefix("buildah version ")?.split_whitespace().next()?;
    (!v.is_empty()).then(|| v.to_string())
}

impl Buildah {
    fn global(&self) -> Vec<OsString> {
        vec![
            "--root".into(),
            self.root.clone().into(),
            "--runroot".into(),
            self.runroot.clone().into(),
            "--storage-driver".into(),
            "vfs".into(),
        ]
    }

    /// `bud`: builds `context` with `dockerfile` (a file outside the context) into
    /// the local image `image`.
    pub fn bud(&self, dockerfile: &Path, image: &str, context: &Path, args: &[(String, String)]) -> Vec<OsString> {
        let mut a = self.global();
        a.extend(["bud".into(), "--isolation".into(), "chroot".into(), "--signature-policy".into()]);
        a.push(self.policy.clone().into());
        a.extend(["-f".into(), dockerfile.as_os_str().to_owned(), "-t".into(), image.into()]);
        for (k, v) in args {
            a.push("--build-arg".into());
            a.push(format!("{k}={v}").into());
        }
        a.push(context.as_os_str().to_owned());
        a
    }

    /// `push`: writes the local image `image` as an OCI layout at `dest`.
    pub fn push(&self, image: &str, dest: &Path) -> Vec<OsString> {
        let mut a = self.global();
        a.extend(["push".into(), "--signature-policy".into(), self.policy.clone().into(), image.into()]);
        let mut to = OsString::from("oci:");
        to.push(dest.as_os_str());
        to.push(":latest");
        a.push(to);
        a
    }

    /// `rmi`: forgets the local image `image` (its layers go unless shared).
    pub fn rmi(&self, image: &str) -> Vec<OsString> {
        let mut a = self.global();
        a.extend(["rmi".into(), "--force".into(), image.into()]);
        a
    }

    /// `rm --all`: removes every working container (a build stopped halfway leaves one).
    pub fn rm_all(&self) -> Vec<OsString> {
        let mut a = self.global();
        a.extend(["rm".into(), "--all".into()]);
        a
    }

    /// `rmi --all --force`: removes every image, base images included.
    pub fn rmi_all(&self) -> Vec<OsString> {
        let mut a = self.global();
        a.extend(["rmi".into(), "--all".into(), "--force".into()]);
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_from_the_first_line() {
        assert_eq!(
            parse_version("buildah version 1.28.2 (image-spec 1.1.0-rc2, runtime-spec 1.0.2-dev)").as_deref(),
            Some("1.28.2")
        );
        assert_eq!(parse_version("podman version 4"), None);
    }

    #[test]
    fn command_lines_use_berths_storage_and_chroot() {
        let b = Buildah {
            program: "buildah".into(),
            root: "/d/builds/storage".into(),
            runroot: "/r/builds".into(),
            policy: "/d/builds/policy.json".into(),
        };
        let bud = b.bud(
            Path::new("/t/Dockerfile"),
            "berth-build/dep_1",
            Path::new("/t/context"),
            &[("A".into(), "b c".into())],
        );
        let bud: Vec<String> = bud.iter().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(bud[..6], ["--root", "/d/builds/storage", "--runroot", "/r/builds", "--storage-driver", "vfs"]);
        assert!(bud.windows(3).any(|w| w == ["bud", "--isolation", "chroot"]));
        assert!(bud.windows(2).any(|w| w == ["--build-arg", "A=b c"]));
        assert_eq!(bud.last().map(String::as_str), Some("/t/context"));
        let push: Vec<String> = b.push("x", Path::new("/t/out")).iter().map(|a| a.to_string_lossy().into()).collect();
        assert_eq!(push.last().map(String::as_str), Some("oci:/t/out:latest"));
    }

    #[test]
    fn a_missing_program_is_not_located() {
        assert!(locate("/nonexistent/buildah").is_none());
        assert!(locate("sh").is_some());
    }
}
