//! `vitrine serve` on transparent huge pages, through the real binary: the
//! re-exec keeps the process (its id, its name), it serves and shuts down
//! as before, the tunables are in its environment once, an operator's
//! `GLIBC_TUNABLES` is kept or merged as `huge_pages.rs` says, `off`
//! leaves the environment alone, and a bad flag value stops it before any
//! exec.
//!
//! The re-exec happens only where the kernel gives huge pages on request
//! (`madvise`); elsewhere these tests print why and pass.

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use crate::huge_pages_kit::{madvise_kernel, Served, ADDED, BIN};
use crate::support::{http_get_blocking, temp_dir};

/// The re-exec'd server: same pid and name, serving, health answers,
/// tunables in its environment exactly once, one "huge pages" log line
/// (from the second start only), and SIGTERM ends it cleanly.
#[test]
fn reexec_keeps_pid_and_name_serves_and_stops_on_sigterm() {
    if !madvise_kernel("reexec_keeps_pid_and_name") {
        return;
    }
    let served = Served::start("huge-pages-on", &[], &[]);
    // The child's pid is the one spawned: the exec replaced it in place.
    assert_eq!(served.comm(), "vitrine", "the process keeps its name");
    assert_eq!(served.tunables(), vec![ADDED.to_string()], "the tunables, once");
    let log = served.log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("huge pages pages=")).collect();
    assert_eq!(lines.len(), 1, "one start logs, after the exec: {log}");
    assert!(lines[0].contains(&format!("GLIBC_TUNABLES={ADDED}")), "{log}");
    // Held back while the state was restored, on again once it was.
    let held = log.find("huge pages: held back while the state is restored");
    let again = log.find("huge pages: on again");
    assert!(held.is_some() && held < again, "held back, then on again: {log}");
    assert_eq!(log.matches("huge pages: held back").count(), 1, "{log}");
    assert_eq!(
        served.thp_enabled(),
        "1",
        "the process's THP flag is cleared after the restore"
    );
    assert_eq!(log.matches("vitrine serving").count(), 1, "{log}");
    let health = Command::new(BIN)
        .args(["health", "--addr", &served.grpc.to_string()])
        .output()
        .unwrap();
    assert_eq!(health.status.code(), Some(0), "{health:?}");
    assert!(http_get_blocking(served.metrics, "/healthz").is_some_and(|r| r.starts_with("HTTP/1.1 200")));
    served.terminate();
}

/// An operator's `GLIBC_TUNABLES`: one naming `hugetlb` is kept as it is
/// (no exec); others get the two tunables appended (an `arena_max` of
/// theirs is kept and not repeated).
#[test]
fn an_operators_tunables_are_kept_or_merged() {
    if !madvise_kernel("an_operators_tunables_are_kept_or_merged") {
        return;
    }
    let cases = [
        ("glibc.malloc.hugetlb=0", "glibc.malloc.hugetlb=0"),
        ("glibc.malloc.hugetlb=2", "glibc.malloc.hugetlb=2"),
        (
            "glibc.malloc.tcache_count=0:glibc.malloc.hugetlb=0",
            "glibc.malloc.tcache_count=0:glibc.malloc.hugetlb=0",
        ),
        (
            "glibc.malloc.tcache_count=0",
            "glibc.malloc.tcache_count=0:glibc.malloc.hugetlb=1:glibc.malloc.arena_max=1",
        ),
        (
            "glibc.malloc.arena_max=4",
            "glibc.malloc.arena_max=4:glibc.malloc.hugetlb=1",
        ),
        ("", ADDED),
    ];
    for (given, expected) in cases {
        let served = Served::start("huge-pages-operator", &[], &[("GLIBC_TUNABLES", given)]);
        assert_eq!(served.comm(), "vitrine");
        assert_eq!(served.tunables(), vec![expected.to_string()], "given {given:?}");
        let log = served.log();
        assert_eq!(
            log.lines().filter(|l| l.contains("huge pages pages=")).count(),
            1,
            "given {given:?}: {log}"
        );
        // The restore holds huge pages back only where malloc advises them.
        let advised = expected.split(':').any(|t| t == "glibc.malloc.hugetlb=1");
        assert_eq!(log.contains("huge pages: held back"), advised, "given {given:?}: {log}");
        assert_eq!(served.thp_enabled(), "1", "given {given:?}");
        served.terminate();
    }
}

/// `--huge-pages off` (and its environment variable) leaves the
/// environment alone: no tunables, or the operator's untouched.
#[test]
fn off_leaves_the_environment_alone() {
    for (extra, env, expected) in [
        (&["--huge-pages", "off"][..], &[][..], vec![]),
        (&["--huge-pages=false"][..], &[][..], vec![]),
        (&[][..], &[("VITRINE_HUGE_PAGES", "off")][..], vec![]),
        (
            &["--huge-pages", "off"][..],
            &[("GLIBC_TUNABLES", "glibc.malloc.tcache_count=0")][..],
            vec!["glibc.malloc.tcache_count=0".to_string()],
        ),
    ] {
        let served = Served::start("huge-pages-off", extra, env);
        assert_eq!(served.tunables(), expected, "{extra:?} {env:?}");
        assert!(!served.log().contains("huge pages"), "{}", served.log());
        served.terminate();
    }
}

/// A process that was restarted once and still lacks its tunable (what a
/// secure mode the auxiliary vector did not show would do) does not
/// restart again: it serves on 4 KiB pages and says why.
#[test]
fn a_second_restart_never_happens() {
    if !madvise_kernel("a_second_restart_never_happens") {
        return;
    }
    let served = Served::start("huge-pages-dropped", &[], &[("VITRINE_HUGE_PAGES_RESTARTED", "1")]);
    assert!(served.tunables().is_empty(), "{:?}", served.tunables());
    assert!(served.log().contains("did not reach the process"), "{}", served.log());
    served.terminate();
}

/// A value that is neither on nor off: exit 2 naming the flag and the
/// value, before anything starts (no exec, no serving line).
#[test]
fn a_bad_value_exits_2_before_any_exec() {
    for (extra, env) in [
        (&["--huge-pages", "maybe"][..], &[][..]),
        (&[][..], &[("VITRINE_HUGE_PAGES", "maybe")][..]),
    ] {
        let mut served = Served::spawn("huge-pages-bad", extra, env);
        let status = served.wait_ready().expect_err("started with a bad --huge-pages");
        assert_eq!(status.code(), Some(2), "{}", served.log());
        let log = served.log();
        assert!(log.contains("--huge-pages"), "names the flag: {log}");
        assert!(log.contains("'maybe'"), "names the value: {log}");
        assert!(!log.contains("huge pages"), "{log}");
        assert!(!log.contains("vitrine serving"), "{log}");
    }
}

/// With file capabilities (`setcap cap_net_bind_service=+ep`, to bind a
/// low port as a plain user) glibc runs the process in secure mode and
/// erases `glibc.malloc.*` from `GLIBC_TUNABLES`: the server must not
/// restart itself then (it used to exec itself forever, at 100% CPU, and
/// never serve). Needs root (to set the capability and drop to `nobody`),
/// `setcap` and `setpriv`; skipped otherwise.
#[test]
fn file_capabilities_do_not_loop_the_exec() {
    if !madvise_kernel("file_capabilities_do_not_loop_the_exec") {
        return;
    }
    let tool = |name: &str| {
        ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
            .iter()
            .map(|d| PathBuf::from(d).join(name))
            .find(|p| p.exists())
    };
    let (Some(setcap), Some(setpriv)) = (tool("setcap"), tool("setpriv")) else {
        eprintln!("file_capabilities_do_not_loop_the_exec: skipped: no setcap or setpriv");
        return;
    };
    let root = fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"));
    if !root {
        eprintln!("file_capabilities_do_not_loop_the_exec: skipped: not root");
        return;
    }
    let dir = temp_dir("huge-pages-caps");
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
    fs::set_permissions(dir.path().join("rules"), fs::Permissions::from_mode(0o777)).unwrap();
    let bin = dir.path().join("vitrine");
    fs::copy(BIN, &bin).unwrap();
    let set = Command::new(&setcap)
        .arg("cap_net_bind_service+ep")
        .arg(&bin)
        .output()
        .unwrap();
    if !set.status.success() {
        eprintln!("file_capabilities_do_not_loop_the_exec: skipped: setcap failed: {set:?}");
        return;
    }
    let program = [
        setpriv.display().to_string(),
        "--reuid=65534".into(),
        "--regid=65534".into(),
        "--clear-groups".into(),
        bin.display().to_string(),
    ];
    let mut served = Served::spawn_as(dir, &program, &[], &[]);
    // The log file is the test's (root's): the child writes through the
    // descriptor it inherited.
    if let Err(status) = served.wait_ready() {
        panic!("exited before ready ({status}):\n{}", served.log());
    }
    assert_eq!(served.comm(), "vitrine");
    assert_eq!(served.tunables(), Vec::<String>::new(), "no restart with tunables");
    let log = served.log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("huge pages")).collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(lines[0].contains("file capabilities"), "says why: {log}");
    served.terminate();
}

/// `--huge-pages-restore fault` never holds; `auto` does not hold a
/// restore with no snapshot to load (nothing to fault in); a bad value
/// stops the start (exit 2).
#[test]
fn the_restore_policy_holds_only_when_it_says() {
    if !madvise_kernel("the_restore_policy_holds_only_when_it_says") {
        return;
    }
    for (flag, env) in [
        (&["--huge-pages-restore", "fault"][..], &[][..]),
        (&[][..], &[("VITRINE_HUGE_PAGES_RESTORE", "fault")][..]),
        (&["--huge-pages-restore", "auto"][..], &[][..]),
    ] {
        let served = Served::start("huge-pages-restore-policy", flag, env);
        let log = served.log();
        assert!(log.contains("huge pages pages="), "{flag:?} {env:?}: {log}");
        assert!(!log.contains("held back"), "{flag:?} {env:?}: {log}");
        assert_eq!(served.thp_enabled(), "1", "{flag:?} {env:?}");
        served.terminate();
    }
    let out = Command::new(BIN)
        .args(["serve", "--huge-pages-restore", "sometimes"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}
