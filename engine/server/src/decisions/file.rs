//! `--decision-log FILE`: decision records as JSON lines, buffered, rotated
//! by size (`FILE` -> `FILE.1` -> ... -> `FILE.<keep>`, the oldest deleted).

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write as _};
use std::path::{Path, PathBuf};

/// Bytes buffered before a write reaches the file (also flushed whenever
/// the decision log's queue runs empty).
pub const BUFFER_BYTES: usize = 64 << 10;

/// An append-only JSON-lines file with size rotation.
#[derive(Debug)]
pub struct FileLog {
    path: PathBuf,
    max_bytes: u64,
    keep: usize,
    out: Option<BufWriter<File>>,
    /// Bytes in the current file, buffered ones included.
    written: u64,
}

impl FileLog {
    /// Opens (creates, or appends to) `path`; it rotates once adding a
    /// line would take it past `max_bytes`, keeping `keep` rotated files.
    pub fn open(path: &Path, max_bytes: u64, keep: usize) -> io::Result<FileLog> {
        let mut log = FileLog {
            path: path.to_path_buf(),
            max_bytes: max_bytes.max(1),
            keep,
            out: None,
            written: 0,
        };
        log.reopen()?;
        Ok(log)
    }

    fn reopen(&mut self) -> io::Result<()> {
        let file = OpenOptions::new().create(true).append(true).open(&self.path)?;
        self.written = file.metadata()?.len();
        self.out = Some(BufWriter::with_capacity(BUFFER_BYTES, file));
        Ok(())
    }

    /// `FILE.n`.
    pub fn rotated(path: &Path, n: usize) -> PathBuf {
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    /// Appends one line (`line` plus a newline). After an error the file is
    /// reopened at the next line.
    pub fn append(&mut self, line: &str) -> io::Result<()> {
        let size = line.len() as u64 + 1;
        if self.written > 0 && self.written + size > self.max_bytes {
            self.rotate()?;
        }
        if self.out.is_none() {
            self.reopen()?;
        }
        let Some(out) = self.out.as_mut() else {
            return Err(io::Error::other("decision log file not open"));
        };
        let written = out.write_all(line.as_bytes()).and_then(|()| out.write_all(b"\n"));
        if written.is_err() {
            self.out = None;
        }
        written?;
        self.written += size;
        Ok(())
    }

    /// Writes what is buffered to the file.
    pub fn flush(&mut self) -> io::Result<()> {
        match self.out.as_mut() {
            Some(out) => {
                let flushed = out.flush();
                if flushed.is_err() {
                    self.out = None;
                }
                flushed
            }
            None => Ok(()),
        }
    }

    /// `FILE.<keep>` deleted, each `FILE.n` renamed `FILE.<n+1>`, `FILE`
    /// renamed `FILE.1` (deleted when `keep` is 0), a new `FILE` opened.
    fn rotate(&mut self) -> io::Result<()> {
        if let Some(mut out) = self.out.take() {
            out.flush()?;
        }
        if self.keep == 0 {
            remove_if_present(&self.path)?;
        } else {
            remove_if_present(&Self::rotated(&self.path, self.keep))?;
            for n in (1..self.keep).rev() {
                let from = Self::rotated(&self.path, n);
                if from.exists() {
                    std::fs::rename(&from, Self::rotated(&self.path, n + 1))?;
                }
            }
            std::fs::rename(&self.path, Self::rotated(&self.path, 1))?;
        }
        self.reopen()
    }
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

impl Drop for FileLog {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vitrine-decision-file-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn rotates_at_the_size_and_keeps_the_newest_files() {
        let dir = tempdir("rotate");
        let path = dir.join("decisions.jsonl");
        // Each line is 10 bytes with its newline; 25 bytes hold two.
        let mut log = FileLog::open(&path, 25, 2).unwrap();
        for i in 0..7 {
            log.append(&format!("line-{i:04}")).unwrap();
        }
        log.flush().unwrap();
        let read = |p: PathBuf| std::fs::read_to_string(p).unwrap();
        assert_eq!(read(path.clone()), "line-0006\n");
        assert_eq!(read(FileLog::rotated(&path, 1)), "line-0004\nline-0005\n");
        assert_eq!(read(FileLog::rotated(&path, 2)), "line-0002\nline-0003\n");
        assert!(
            !FileLog::rotated(&path, 3).exists(),
            "only --decision-log-keep rotated files"
        );
        // Reopened, it appends and counts what the file holds.
        drop(log);
        let mut log = FileLog::open(&path, 25, 2).unwrap();
        log.append("line-0007").unwrap();
        log.append("line-0008").unwrap();
        log.flush().unwrap();
        assert_eq!(read(path.clone()), "line-0008\n");
        assert_eq!(read(FileLog::rotated(&path, 1)), "line-0006\nline-0007\n");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn keep_zero_keeps_only_the_current_file() {
        let dir = tempdir("keep0");
        let path = dir.join("d.jsonl");
        let mut log = FileLog::open(&path, 15, 0).unwrap();
        for i in 0..3 {
            log.append(&format!("line-{i:04}")).unwrap();
        }
        log.flush().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "line-0002\n");
        assert!(!FileLog::rotated(&path, 1).exists());
        let _ = std::fs::remove_dir_all(dir);
    }
}
