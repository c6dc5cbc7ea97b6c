//! The `vitrine serve` child the huge-pages tests run (`huge_pages_attack`,
//! `huge_pages_restore_attack`): spawned with only the environment given,
//! waited for by its log and `/readyz`, read through `/proc`.

use std::fs;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::support::{self, free_port, http_get_blocking, temp_dir, TempDir, WAIT};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_vitrine");
pub(crate) const THP: &str = "/sys/kernel/mm/transparent_hugepage/enabled";
pub(crate) const ADDED: &str = "glibc.malloc.hugetlb=1:glibc.malloc.arena_max=1";

/// True when the kernel gives huge pages on request; else prints why not.
pub(crate) fn madvise_kernel(test: &str) -> bool {
    let enabled = fs::read_to_string(THP).unwrap_or_default();
    if enabled.contains("[madvise]") {
        return true;
    }
    eprintln!("{test}: skipped: {THP} says {enabled:?}, not [madvise]: the server does not re-exec");
    false
}

/// A `vitrine serve` child; killed on drop.
pub(crate) struct Served {
    pub(crate) child: Child,
    pub(crate) grpc: SocketAddr,
    pub(crate) metrics: SocketAddr,
    pub(crate) log: PathBuf,
    _dir: TempDir,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Served {
    /// Spawns `vitrine serve` with `extra` flags and only the environment
    /// given (`GLIBC_TUNABLES` and `VITRINE_*` of the test's own removed).
    pub(crate) fn spawn(name: &str, extra: &[&str], env: &[(&str, &str)]) -> Served {
        Served::spawn_as(temp_dir(name), &[BIN.to_string()], extra, env)
    }

    /// [`Served::spawn`] in `dir`, the command being `program` (a program
    /// and its first arguments, the binary among them).
    pub(crate) fn spawn_as(dir: TempDir, program: &[String], extra: &[&str], env: &[(&str, &str)]) -> Served {
        let log = dir.path().join("serve.log");
        let grpc: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut cmd = Command::new(&program[0]);
        cmd.args(&program[1..]);
        for (key, _) in std::env::vars_os() {
            if key.to_str().is_some_and(|k| k.starts_with("VITRINE_")) {
                cmd.env_remove(key);
            }
        }
        cmd.env_remove("GLIBC_TUNABLES")
            .arg("serve")
            .arg(format!("--grpc-addr={grpc}"))
            .arg(format!("--metrics-addr={metrics}"))
            .arg(format!("--rules-dir={}", dir.path().join("rules").display()))
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .arg("--shutdown-grace=0s")
            .args(extra)
            .env("VITRINE_LOG", "info")
            .env("NO_COLOR", "1")
            // The hold whatever the host's free memory (`auto` decides by
            // it); a test's own `env` may choose otherwise.
            .env("VITRINE_HUGE_PAGES_RESTORE", "hold")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap());
        Served {
            child: cmd.spawn().unwrap(),
            grpc,
            metrics,
            log,
            _dir: dir,
        }
    }

    pub(crate) fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `/readyz` answers 200 and this process logged that it
    /// serves (a port picked free may have been taken by a parallel test's
    /// server, whose `/readyz` would answer first); the exit status if it
    /// ends first.
    pub(crate) fn wait_ready(&mut self) -> Result<(), ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Err(status);
            }
            if self.log().contains("vitrine serving")
                && http_get_blocking(self.metrics, "/readyz").is_some_and(|r| r.starts_with("HTTP/1.1 200"))
            {
                return Ok(());
            }
            assert!(start.elapsed() < WAIT, "not ready after {WAIT:?}:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts and waits for ready, retrying on ports lost to others.
    pub(crate) fn start(name: &str, extra: &[&str], env: &[(&str, &str)]) -> Served {
        for _ in 0..5 {
            let mut served = Served::spawn(name, extra, env);
            match served.wait_ready() {
                Ok(()) => return served,
                Err(status) => {
                    let log = served.log();
                    assert!(log.contains("binding --"), "exited before ready ({status}):\n{log}");
                }
            }
        }
        panic!("no free ports in 5 attempts");
    }

    /// [`Served::start`] on `dir` (a data directory from an earlier run,
    /// say), retrying on ports lost to others.
    pub(crate) fn start_in(mut dir: TempDir, extra: &[&str], env: &[(&str, &str)]) -> Served {
        for _ in 0..5 {
            let mut served = Served::spawn_as(dir, &[BIN.to_string()], extra, env);
            match served.wait_ready() {
                Ok(()) => return served,
                Err(status) => {
                    let log = served.log();
                    assert!(log.contains("binding --"), "exited before ready ({status}):\n{log}");
                    dir = served.into_dir();
                }
            }
        }
        panic!("no free ports in 5 attempts");
    }

    /// The directory, the process killed if it still runs.
    pub(crate) fn into_dir(mut self) -> TempDir {
        std::mem::replace(&mut self._dir, temp_dir("huge-pages-spent"))
    }

    /// SIGTERM, a clean exit (a final snapshot written), and the directory
    /// for the next start.
    pub(crate) fn terminate_keeping_dir(mut self) -> TempDir {
        let dir = std::mem::replace(&mut self._dir, temp_dir("huge-pages-spent"));
        self.terminate();
        dir
    }

    /// `GLIBC_TUNABLES` entries in the environment the running process was
    /// started (exec'd) with. /proc/PID/environ shows that block as the
    /// process's memory holds it now, and glibc (2.36 here) ends each
    /// tunable it parses with a NUL in place, so `a=1:b=2` reads as `a=1`,
    /// `b=2`: the pieces after an entry that start with `glibc.` (no
    /// variable's name has a dot) are joined back with `:`.
    pub(crate) fn tunables(&self) -> Vec<String> {
        let environ = fs::read(format!("/proc/{}/environ", self.child.id())).unwrap();
        let mut out: Vec<String> = Vec::new();
        let mut open = false;
        for var in environ.split(|&b| b == 0) {
            let var = String::from_utf8_lossy(var);
            if let Some(value) = var.strip_prefix("GLIBC_TUNABLES=") {
                out.push(value.to_string());
                open = true;
            } else if open && var.starts_with("glibc.") {
                if let Some(last) = out.last_mut() {
                    last.push(':');
                    last.push_str(&var);
                }
            } else {
                open = false;
            }
        }
        out
    }

    /// `THP_enabled` of `/proc/PID/status`: "0" while the process has
    /// huge pages switched off (`PR_SET_THP_DISABLE`).
    pub(crate) fn thp_enabled(&self) -> String {
        let status = fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("THP_enabled:"))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("no THP_enabled in the status: {status}"))
    }

    pub(crate) fn comm(&self) -> String {
        fs::read_to_string(format!("/proc/{}/comm", self.child.id()))
            .unwrap()
            .trim_end()
            .to_string()
    }

    /// SIGTERM to the pid the test spawned; waits for a clean exit.
    pub(crate) fn terminate(mut self) {
        let log = self.log.clone();
        support::terminate(&mut self.child, || fs::read_to_string(&log).unwrap_or_default());
    }
}
