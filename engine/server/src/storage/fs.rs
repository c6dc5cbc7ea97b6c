//! Durable file operations shared by everything that writes under
//! `--data-dir` and `--rules-dir`: one atomic write and one directory fsync.
//!
//! The policy is the safe one: a write is done only once the directory
//! holding it is fsync'd, and a failed directory fsync is an error like any
//! other (a rename that may not survive a crash is not a write; after a
//! failed fsync, what reached the disk is unknown).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Writes `path` so that readers see its old content or the new `bytes`,
/// never a mix: a temp file in the same directory, written and fsync'd,
/// renamed over `path`, then the directory fsync'd. Every failure is
/// returned, and the temp file is removed on failure.
///
/// The temp file is `.vitrine-tmp-<pid>-<n>`: not named after `path`, so it
/// stays short whatever the target and never matches a pattern the target
/// directory is scanned for. One left by a crashed process with the same
/// pid (pid 1 in a container) is overwritten, not an error.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let tmp = format!(
        ".vitrine-tmp-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    write_atomic_via(path, &tmp, bytes)
}

/// [`write_atomic`] through the temp file `tmp_name` in `path`'s directory,
/// for a directory whose owner removes that name on start (a crash between
/// the write and the rename leaves it behind).
pub fn write_atomic_via(path: &Path, tmp_name: &str, bytes: &[u8]) -> io::Result<()> {
    let dir = parent(path);
    let tmp = dir.join(tmp_name);
    let written = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        })
        .and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(dir)
}

/// Makes the entries of `dir` (a creation, a rename, a removal) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The directory `path` is in (`.` for a bare file name).
fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    /// The atomic write leaves no temp file behind when it fails (here the
    /// rename onto a directory), and replaces a file in one step.
    #[test]
    fn write_atomic_cleans_up_after_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("t.yaml");
        fs::create_dir_all(target.join("sub")).unwrap();
        assert!(write_atomic(&target, b"x").is_err());
        fs::remove_dir_all(&target).unwrap();
        write_atomic(&target, b"one").unwrap();
        write_atomic(&target, b"two").unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"two");
        assert_eq!(names(dir.path()), ["t.yaml"]);
    }

    /// A named temp file: the same, and a missing directory is an error.
    #[test]
    fn write_atomic_via_a_named_temp_replaces_or_fails_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("state");
        write_atomic_via(&target, "state.tmp", b"one").unwrap();
        write_atomic_via(&target, "state.tmp", b"two").unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"two");
        fs::create_dir_all(dir.path().join("busy/sub")).unwrap();
        assert!(write_atomic_via(&dir.path().join("busy"), "state.tmp", b"x").is_err());
        assert_eq!(names(dir.path()), ["busy", "state"]);
        let missing = dir.path().join("missing/state");
        assert_eq!(
            write_atomic_via(&missing, "state.tmp", b"x").unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        assert_eq!(
            sync_dir(&dir.path().join("missing")).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }
}
