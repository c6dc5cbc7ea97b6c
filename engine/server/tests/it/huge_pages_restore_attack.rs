//! Huge pages held back while the state is restored (`huge_pages::hold`,
//! `Held::release`), attacked: a real snapshot restores with huge pages
//! held, then on again; a damaged snapshot (set aside, the journal
//! restores) ends the same way; a start refused after the hold (an
//! unreadable journal) exits, and `start` failing inside a process that
//! goes on leaves huge pages on; an operator's own `glibc.malloc.hugetlb`
//! holds them only when it makes malloc advise them (the last one named
//! wins); a process started with huge pages switched off by its parent
//! keeps them off.
//!
//! Like `huge_pages_attack`, these run only where the kernel gives huge
//! pages on request (`madvise`); elsewhere they print why and pass.

use std::fs;
use std::process::Command;

use crate::huge_pages_kit::{madvise_kernel, Served, ADDED, BIN};
use crate::support::{temp_dir, test_config, TempDir};

const HELD: &str = "huge pages: held back while the state is restored";
const AGAIN: &str = "huge pages: on again";

/// `THP_enabled` of `/proc/self/status`: 0 while the process has huge pages
/// switched off (`PR_SET_THP_DISABLE`).
fn own_thp_enabled() -> String {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("THP_enabled:"))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no THP_enabled in the status: {status}"))
}

/// A directory whose rules are the demo shop's and whose data holds the
/// final snapshot of a `--demo` run (2,000 visitors), with that run's log.
fn snapshot_dir(name: &str) -> TempDir {
    let dir = temp_dir(name);
    let rules = concat!(env!("CARGO_MANIFEST_DIR"), "/../../rules/demo-beauty.yaml");
    fs::copy(rules, dir.path().join("rules/demo-beauty.yaml")).unwrap();
    let served = Served::start_in(dir, &["--demo", "--snapshot-interval=0"], &[]);
    let log = served.log.clone();
    let dir = served.terminate_keeping_dir();
    let log = fs::read_to_string(log).unwrap();
    assert!(log.contains("snapshot written"), "no final snapshot:\n{log}");
    dir
}

/// The snapshot files of `dir`'s data directory.
fn snapshots(dir: &TempDir) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = fs::read_dir(dir.path().join("data/snapshots"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "vsnap"))
        .collect();
    files.sort();
    files
}

/// Held back, then on again, once each and in that order.
fn assert_held_then_on_again(log: &str) {
    let held = log.find(HELD);
    let again = log.find(AGAIN);
    assert!(held.is_some() && held < again, "held back, then on again:\n{log}");
    assert_eq!(log.matches(HELD).count(), 1, "{log}");
    assert_eq!(log.matches(AGAIN).count(), 1, "{log}");
}

/// A restart on a real snapshot: the snapshot loads while huge pages are
/// held back, they are on again before the server serves, and the
/// process's flag says so.
#[test]
fn a_real_snapshot_restores_held_back_then_on_again() {
    if !madvise_kernel("a_real_snapshot_restores_held_back_then_on_again") {
        return;
    }
    let dir = snapshot_dir("huge-pages-snapshot");
    assert_eq!(snapshots(&dir).len(), 1);
    let served = Served::start_in(dir, &["--snapshot-interval=0"], &[]);
    let log = served.log();
    assert!(log.contains("snapshot loaded"), "{log}");
    assert_eq!(served.tunables(), vec![ADDED.to_string()]);
    assert_held_then_on_again(&log);
    let (again, serving) = (log.find(AGAIN), log.find("vitrine serving"));
    assert!(again < serving, "on again before serving:\n{log}");
    assert_eq!(served.thp_enabled(), "1", "huge pages on again after the restore");
    served.terminate();
}

/// A damaged snapshot is set aside and the journal restores the state: the
/// start goes on, and so do huge pages.
#[test]
fn a_damaged_snapshot_ends_with_huge_pages_on() {
    if !madvise_kernel("a_damaged_snapshot_ends_with_huge_pages_on") {
        return;
    }
    let dir = snapshot_dir("huge-pages-damaged");
    let newest = snapshots(&dir).pop().unwrap();
    let mut bytes = fs::read(&newest).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x10;
    fs::write(&newest, &bytes).unwrap();
    let served = Served::start_in(dir, &["--snapshot-interval=0"], &[]);
    let log = served.log();
    assert!(
        !log.contains("snapshot loaded"),
        "the damaged snapshot was loaded:\n{log}"
    );
    assert_held_then_on_again(&log);
    assert_eq!(served.thp_enabled(), "1");
    served.terminate();
}

/// A journal that cannot be read (a file where its directory belongs)
/// refuses the start after huge pages were held back: the process exits
/// with the error, it does not go on without them.
#[test]
fn an_unreadable_journal_exits_after_the_hold() {
    if !madvise_kernel("an_unreadable_journal_exits_after_the_hold") {
        return;
    }
    let dir = temp_dir("huge-pages-journal");
    fs::create_dir_all(dir.path().join("data")).unwrap();
    fs::write(dir.path().join("data/events"), b"not a directory").unwrap();
    let mut served = Served::spawn_as(dir, &[BIN.to_string()], &[], &[]);
    let status = served.child.wait().unwrap();
    let log = served.log();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains(HELD), "the restore ran with huge pages held back:\n{log}");
    assert!(!log.contains(AGAIN), "{log}");
    assert!(
        log.contains("vitrine serve:") && !log.contains("vitrine serving"),
        "{log}"
    );
}

/// A second server on a locked data directory stops before anything is held.
#[test]
fn a_locked_data_directory_stops_before_the_hold() {
    if !madvise_kernel("a_locked_data_directory_stops_before_the_hold") {
        return;
    }
    let first = Served::start("huge-pages-locked", &[], &[]);
    let data = first.log.parent().unwrap().join("data");
    let dir = temp_dir("huge-pages-locked-second");
    let data_flag = format!("--data-dir={}", data.display());
    let out = Command::new(BIN)
        .env_remove("GLIBC_TUNABLES")
        .args(["serve", "--grpc-addr=127.0.0.1:0", "--metrics-addr=127.0.0.1:0"])
        .arg(format!("--rules-dir={}", dir.path().join("rules").display()))
        .arg(&data_flag)
        .env("VITRINE_LOG", "info")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(log.contains("vitrine.lock"), "{log}");
    assert!(!log.contains(HELD), "{log}");
    first.terminate();
}

/// An operator's own `glibc.malloc.hugetlb` (no exec): held back only when
/// the value glibc keeps, the last one named, makes malloc advise huge pages.
#[test]
fn an_operators_hugetlb_holds_only_when_malloc_advises() {
    if !madvise_kernel("an_operators_hugetlb_holds_only_when_malloc_advises") {
        return;
    }
    let cases = [
        ("glibc.malloc.hugetlb=1", true),
        ("glibc.malloc.hugetlb=1:glibc.malloc.arena_max=1", true),
        ("glibc.malloc.hugetlb=0:glibc.malloc.hugetlb=1", true),
        ("glibc.malloc.hugetlb=1:glibc.malloc.hugetlb=0", false),
        ("glibc.malloc.hugetlb=1:glibc.malloc.hugetlb=2", false),
        ("glibc.malloc.hugetlb=2:glibc.malloc.hugetlb=1", true),
        ("glibc.malloc.hugetlb=0", false),
    ];
    for (given, held) in cases {
        let served = Served::start("huge-pages-operator-hugetlb", &[], &[("GLIBC_TUNABLES", given)]);
        assert_eq!(served.tunables(), vec![given.to_string()], "kept as given");
        let log = served.log();
        assert_eq!(log.contains(HELD), held, "given {given:?}:\n{log}");
        if held {
            assert_held_then_on_again(&log);
        }
        assert_eq!(served.thp_enabled(), "1", "given {given:?}");
        served.terminate();
    }
}

/// A parent that switched huge pages off for the process (the flag is
/// inherited through fork and exec) is obeyed: the restore does not hold
/// them (they are off already) and nothing switches them on afterwards.
#[test]
fn huge_pages_switched_off_by_the_parent_stay_off() {
    if !madvise_kernel("huge_pages_switched_off_by_the_parent_stay_off") {
        return;
    }
    // PR_SET_THP_DISABLE (41), then exec the server: python's ctypes, as the
    // workspace forbids the `unsafe` a `pre_exec` would need.
    let Ok(python) = which("python3") else {
        eprintln!("huge_pages_switched_off_by_the_parent_stay_off: skipped: no python3 on PATH");
        return;
    };
    let program = [
        python,
        "-c".to_string(),
        "import ctypes, os, sys\n\
         assert ctypes.CDLL(None, use_errno=True).prctl(41, 1, 0, 0, 0) == 0\n\
         os.execv(sys.argv[1], sys.argv[1:])"
            .to_string(),
        BIN.to_string(),
    ];
    let mut served = Served::spawn_as(temp_dir("huge-pages-parent-off"), &program, &[], &[]);
    served
        .wait_ready()
        .unwrap_or_else(|s| panic!("exited ({s}):\n{}", served.log()));
    assert_eq!(served.comm(), "vitrine");
    assert_eq!(served.tunables(), vec![ADDED.to_string()]);
    let log = served.log();
    assert!(
        !log.contains(AGAIN),
        "huge pages switched on against the parent:\n{log}"
    );
    assert_eq!(served.thp_enabled(), "0", "the parent's choice stands");
    served.terminate();
}

/// The path of `program` on `PATH`.
fn which(program: &str) -> Result<String, ()> {
    let path = std::env::var_os("PATH").ok_or(())?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .map(|p| p.display().to_string())
        .ok_or(())
}

/// Marks the child run of [`in_process_start_that_fails_leaves_huge_pages_on`].
const CHILD: &str = "HUGE_PAGES_RESTORE_ATTACK_CHILD";

/// `start` failing in a process that goes on (the way an embedding program
/// or a test calls it): this test binary runs itself with malloc advising
/// huge pages, where [`in_process_child`] starts a server on an unreadable
/// journal; `start` fails after the hold and huge pages are on again.
#[test]
fn in_process_start_that_fails_leaves_huge_pages_on() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "huge_pages_restore_attack::in_process_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .env("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the child failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("1 passed"),
        "the child did not run:\n{stdout}\n{stderr}"
    );
    assert!(stderr.contains("child: start failed"), "{stderr}");
}

/// The child of [`in_process_start_that_fails_leaves_huge_pages_on`]; does
/// nothing when run otherwise.
#[test]
#[ignore = "run by in_process_start_that_fails_leaves_huge_pages_on"]
fn in_process_child() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    // The tunable is named: no exec, but huge pages count as advised.
    let pages = vitrine::huge_pages::reexec();
    assert!(matches!(pages, vitrine::huge_pages::HugePages::Tunable(_)), "{pages}");
    // `hold` really holds in this process.
    let held = vitrine::huge_pages::hold();
    assert!(held.is_held());
    assert_eq!(own_thp_enabled(), "0");
    held.release().unwrap();
    assert_eq!(own_thp_enabled(), "1");

    let dir = temp_dir("huge-pages-in-process");
    fs::create_dir_all(dir.path().join("data")).unwrap();
    fs::write(dir.path().join("data/events"), b"not a directory").unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let Err(e) = rt.block_on(vitrine::commands::serve::start(test_config(dir.path()))) else {
        panic!("the start succeeded on an unreadable journal");
    };
    eprintln!("child: start failed: {e:#}");
    assert_eq!(own_thp_enabled(), "1", "a failed start left huge pages off");
}
