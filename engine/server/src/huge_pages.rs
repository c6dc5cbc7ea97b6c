//! The heap on transparent huge pages.
//!
//! A decision reads a handful of places scattered over the whole index (the
//! visitor's name in the interner, its profile, its entries): at a million
//! visitors each is a cache miss, and with 4 KiB pages each is a TLB miss as
//! well. On 2 MiB pages the TLB covers the index, and a decision at 1M
//! visitors takes about 12% less time (README, "Speed and memory: the fourth
//! round").
//!
//! Most kernels give huge pages only to memory that asks for them
//! (`/sys/kernel/mm/transparent_hugepage/enabled` = `madvise`), and the
//! index is millions of small allocations made by glibc's malloc, which asks
//! only when its tunable `glibc.malloc.hugetlb=1` is set, and then only for
//! its main heap and its large blocks, not for the per-thread arenas where
//! the apply and restore threads would allocate the index. glibc reads
//! tunables once, when the process starts. So [`reexec`] starts the same
//! binary again, in place (same process id, name, arguments and open files),
//! with `glibc.malloc.hugetlb=1:glibc.malloc.arena_max=1` added to
//! `GLIBC_TUNABLES`, before any thread or allocation of note exists: every
//! thread allocates from the main heap (per-thread caches still serve most
//! small allocations without its lock). Measured on a restored 1M-visitor
//! index: 10 MB on huge pages with the first tunable alone, 296 MB of the
//! 330 MB resident with both.
//!
//! It does nothing in glibc's secure mode (setuid, setgid or file
//! capabilities such as `cap_net_bind_service`): glibc erases its malloc
//! tunables from `GLIBC_TUNABLES` there, and the restarted process, not
//! seeing its own, would restart again forever. Nor does it a second time
//! ([`RESTARTED`] marks the restarted process, whatever dropped the
//! tunable), nor when `GLIBC_TUNABLES` already names `hugetlb` or is not
//! UTF-8 (set by the process itself, one exec earlier, or by the operator,
//! whose choice wins), when the kernel gives huge pages to every allocation
//! anyway (`always`) or to none (`never`, or no such file), and off glibc.
//! The benches share this file (`#[path]`), so that they measure what the
//! server runs.
//!
//! Restoring a snapshot faults the whole index in within a second, and for
//! every 2 MiB of advised heap the kernel needs a free huge page; where it
//! has too few it first compacts memory (`defrag` = `madvise`: the faulting
//! thread waits):
//! restart to ready took 1.31 s instead of 0.96 s (README, the fourth
//! round). [`hold`] switches huge pages off for the process
//! (`PR_SET_THP_DISABLE`) while the state is restored, and [`Held::release`]
//! switches them back on once it is. That costs the restore ~0.3 s where
//! the kernel has free 2 MiB blocks (4 KiB faults: README, the fifth and
//! sixth rounds), so `serve` holds only where
//! [`free_huge_bytes`] says they are short (`--huge-pages-restore`).
//! Held, the restored memory, still advised,
//! is collapsed onto huge pages afterwards, in the background, by the
//! kernel's `khugepaged` (at its own pace: minutes for a 1M-visitor index on
//! its default settings), and memory allocated after the restore gets huge
//! pages as it faults in. A process whose parent switched huge pages off
//! (`PR_SET_THP_DISABLE` passes through fork and exec) holds nothing and
//! keeps them off. `--huge-pages off` skips all this.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

/// The glibc tunable (glibc 2.35 and later; older ones ignore it).
const TUNABLE: &str = "glibc.malloc.hugetlb";
/// One malloc arena, so that every thread allocates from the heap that
/// `hugetlb` advises (an operator's own `arena_max` is kept).
const ARENAS: &str = "glibc.malloc.arena_max";
/// Where the kernel says which memory gets transparent huge pages.
const THP_ENABLED: &str = "/sys/kernel/mm/transparent_hugepage/enabled";

/// Why the process runs as it does; [`reexec`] returns only these.
#[derive(Debug)]
pub enum HugePages {
    /// `GLIBC_TUNABLES` names the tunable: malloc asks for huge pages (or
    /// the operator chose otherwise; their value is kept).
    Tunable(String),
    /// The kernel's setting, when it is not `madvise`: `always` gives huge
    /// pages without asking, `never` gives none.
    Kernel(String),
    /// Not Linux with glibc: nothing to do.
    Unsupported,
    /// The process runs in glibc's secure mode (setuid, setgid or file
    /// capabilities, e.g. `setcap cap_net_bind_service=+ep` to bind a low
    /// port): glibc erases `glibc.malloc.*` from `GLIBC_TUNABLES` there, so
    /// the restarted process would not see its tunable and restart again,
    /// forever. No restart: 4 KiB pages.
    Secure,
    /// The process was restarted once already ([`RESTARTED`] is set) and
    /// still does not see its tunable: whatever dropped it (a secure mode
    /// the auxiliary vector did not show, a wrapper that filters the
    /// environment) would drop it again. No second restart: 4 KiB pages.
    Dropped,
    /// The exec failed (e.g. the binary was replaced on disk): the process
    /// goes on without huge pages.
    ExecFailed(std::io::Error),
}

/// Set in the restarted process's environment: the guard that makes a
/// second restart impossible, whatever happens to `GLIBC_TUNABLES`.
pub const RESTARTED: &str = "VITRINE_HUGE_PAGES_RESTARTED";

impl fmt::Display for HugePages {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HugePages::Tunable(v) => write!(f, "GLIBC_TUNABLES={v}"),
            HugePages::Kernel(mode) => write!(f, "kernel transparent huge pages: {mode}"),
            HugePages::Unsupported => f.write_str("not Linux with glibc: left to the allocator"),
            HugePages::Secure => f.write_str("setuid or file capabilities: glibc ignores GLIBC_TUNABLES, 4 KiB pages"),
            HugePages::Dropped => {
                write!(
                    f,
                    "restarted once, but {TUNABLE} did not reach the process: 4 KiB pages"
                )
            }
            HugePages::ExecFailed(e) => write!(f, "could not restart with {TUNABLE}=1 ({e}): 4 KiB pages"),
        }
    }
}

/// Replaces the process by itself with `glibc.malloc.hugetlb=1` and one
/// arena when that gives the heap huge pages (see the module doc); returns,
/// without exec, why not otherwise. Call it first thing in `main`, before
/// any thread starts.
pub fn reexec() -> HugePages {
    if !cfg!(all(target_os = "linux", target_env = "gnu")) {
        return HugePages::Unsupported;
    }
    // A value that is not UTF-8 is the operator's own: left as it is.
    let current = match std::env::var_os("GLIBC_TUNABLES").map(|v| v.into_string()) {
        None => String::new(),
        Some(Ok(v)) => v,
        Some(Err(v)) => return HugePages::Tunable(v.to_string_lossy().into_owned()),
    };
    let names = |name: &str| current.split(':').any(|t| t.split('=').next() == Some(name));
    if names(TUNABLE) {
        ADVISED.store(advises(&current), Ordering::Relaxed);
        return HugePages::Tunable(current);
    }
    let enabled = std::fs::read_to_string(THP_ENABLED).unwrap_or_default();
    let mode = kernel_mode(&enabled);
    if mode != "madvise" {
        return HugePages::Kernel(mode.to_string());
    }
    if std::env::var_os(RESTARTED).is_some() {
        return HugePages::Dropped;
    }
    if secure_mode() {
        return HugePages::Secure;
    }
    let mut tunables = current.clone();
    let mut add = |tunable: String| {
        if !tunables.is_empty() {
            tunables.push(':');
        }
        tunables.push_str(&tunable);
    };
    add(format!("{TUNABLE}=1"));
    if !names(ARENAS) {
        add(format!("{ARENAS}=1"));
    }
    HugePages::ExecFailed(exec_self(&tunables))
}

/// Whether `tunables` (a `GLIBC_TUNABLES` value) makes malloc advise
/// transparent huge pages: `glibc.malloc.hugetlb=1`, the last one named
/// winning as in glibc (`2` asks for hugetlbfs pages, which are reserved
/// ahead and need no compaction).
fn advises(tunables: &str) -> bool {
    let value = tunables
        .split(':')
        .filter_map(|t| t.split_once('='))
        .filter(|(name, _)| *name == TUNABLE)
        .map(|(_, value)| value)
        .next_back();
    value == Some("1")
}

/// Set when this process runs with malloc advising transparent huge pages
/// ([`reexec`] found the tunable): what [`hold`] holds back.
static ADVISED: AtomicBool = AtomicBool::new(false);

/// Huge pages held back while the state is restored (see the module doc);
/// [`Held::release`] gives them back, and so does dropping it (a restore
/// that failed), without the log line.
#[derive(Debug)]
#[must_use = "huge pages stay off for the process until it is released"]
pub struct Held {
    held: bool,
}

/// Switches transparent huge pages off for the process when it runs with
/// malloc advising them, until [`Held::release`]; holds nothing otherwise
/// (huge pages off or not asked for, or the kernel refused). Huge pages
/// already off for the process (its parent's `PR_SET_THP_DISABLE`, which
/// fork and exec pass on) are not held, so nothing switches them on.
pub fn hold() -> Held {
    Held {
        held: ADVISED.load(Ordering::Relaxed) && is_disabled().is_ok_and(|off| !off) && set_disabled(true).is_ok(),
    }
}

impl Held {
    /// Nothing held (the restore faults huge pages in).
    pub fn none() -> Held {
        Held { held: false }
    }

    /// Whether huge pages are held back.
    pub fn is_held(&self) -> bool {
        self.held
    }

    /// Switches huge pages back on, if they were held back.
    pub fn release(mut self) -> std::io::Result<()> {
        if std::mem::take(&mut self.held) {
            set_disabled(false)?;
        }
        Ok(())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.held {
            let _ = set_disabled(false);
        }
    }
}

/// Free memory in blocks of 2 MiB or more, in bytes: the counts of orders
/// 9 and up (4 KiB pages) of every zone in `/proc/buddyinfo`; `None` when
/// it cannot be read. What a restore faulting huge pages in finds without
/// waiting for the kernel to compact memory.
pub fn free_huge_bytes() -> Option<u64> {
    std::fs::read_to_string("/proc/buddyinfo")
        .ok()
        .map(|text| free_huge_in(&text))
}

/// [`free_huge_bytes`] of `buddyinfo`'s text: lines of `Node N, zone NAME`
/// and then the free blocks of each order from 0.
fn free_huge_in(buddyinfo: &str) -> u64 {
    const HUGE_ORDER: usize = 9;
    buddyinfo
        .lines()
        .flat_map(|line| line.split_whitespace().skip(4).enumerate().skip(HUGE_ORDER))
        .map(|(order, n)| {
            let blocks = n.parse::<u64>().unwrap_or(0);
            blocks.saturating_mul(4096u64.checked_shl(order as u32).unwrap_or(0))
        })
        .fold(0u64, u64::saturating_add)
}

/// `prctl(PR_SET_THP_DISABLE)`: the process's "no transparent huge pages"
/// flag (shown as `THP_enabled` in `/proc/PID/status`).
#[cfg(target_os = "linux")]
fn set_disabled(disabled: bool) -> std::io::Result<()> {
    rustix::thread::disable_transparent_huge_pages(disabled).map_err(std::io::Error::from)
}

/// `prctl(PR_GET_THP_DISABLE)`: whether the process's flag is set.
#[cfg(target_os = "linux")]
fn is_disabled() -> std::io::Result<bool> {
    rustix::thread::transparent_huge_pages_are_disabled().map_err(std::io::Error::from)
}

#[cfg(not(target_os = "linux"))]
fn is_disabled() -> std::io::Result<bool> {
    Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
}

#[cfg(not(target_os = "linux"))]
fn set_disabled(_: bool) -> std::io::Result<()> {
    Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
}

/// The bracketed choice of the kernel's `enabled` file ("always [madvise]
/// never" -> "madvise"); "never" when there is none.
fn kernel_mode(enabled: &str) -> &str {
    enabled
        .split_whitespace()
        .find_map(|w| w.strip_prefix('[')?.strip_suffix(']'))
        .unwrap_or("never")
}

/// `AT_SECURE` in the auxiliary vector: the kernel sets it when an exec
/// gave the process privilege (setuid, setgid, file capabilities).
const AT_SECURE: usize = 23;

/// Whether glibc runs this process in secure mode (`AT_SECURE` set in
/// `/proc/self/auxv`; unreadable counts as not).
fn secure_mode() -> bool {
    const WORD: usize = std::mem::size_of::<usize>();
    let Ok(auxv) = std::fs::read("/proc/self/auxv") else {
        return false;
    };
    let word = |bytes: &[u8]| usize::from_ne_bytes(bytes.try_into().unwrap_or([0; WORD]));
    auxv.chunks_exact(2 * WORD).any(|pair| {
        let (key, value) = pair.split_at(WORD);
        word(key) == AT_SECURE && word(value) != 0
    })
}

#[cfg(unix)]
fn exec_self(tunables: &str) -> std::io::Error {
    use std::ffi::OsString;
    use std::os::unix::process::CommandExt;
    // The binary's own path, not /proc/self/exe, so that the process keeps
    // its name (`ps`, `pgrep vitrine`); a binary deleted or replaced since
    // it started fails here or in the exec, and the process goes on.
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return e,
    };
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| OsString::from("vitrine"));
    std::process::Command::new(exe)
        .arg0(arg0)
        .args(args)
        .env("GLIBC_TUNABLES", tunables)
        .env(RESTARTED, "1")
        .exec()
}

#[cfg(not(unix))]
fn exec_self(_: &str) -> std::io::Error {
    std::io::Error::from(std::io::ErrorKind::Unsupported)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_kernels_choice() {
        use super::kernel_mode;
        assert_eq!(kernel_mode("always [madvise] never\n"), "madvise");
        assert_eq!(kernel_mode("[always] madvise never\n"), "always");
        assert_eq!(kernel_mode("always madvise [never]\n"), "never");
        assert_eq!(kernel_mode(""), "never");
        assert_eq!(kernel_mode("always madvise never"), "never");
    }

    #[test]
    fn counts_free_blocks_of_two_mib_and_more() {
        use super::free_huge_in;
        let info = "Node 0, zone      DMA      0      0      0      0      0      0      0      0      1      1      3 \n\
                    Node 0, zone   Normal 707483   7808   4083   2625    803    305    159    109     75     84    215 \n";
        // Orders 9 and 10: (1 + 84) 2 MiB blocks and (3 + 215) 4 MiB ones.
        assert_eq!(free_huge_in(info), (85 * 2 + 218 * 4) << 20);
        assert_eq!(free_huge_in(""), 0);
        assert_eq!(free_huge_in("Node 0, zone Normal 1 2 3"), 0);
        assert_eq!(
            free_huge_in("Node 0, zone Normal 0 0 0 0 0 0 0 0 0 x 18446744073709551615"),
            u64::MAX
        );
    }

    #[test]
    fn advises_only_transparent_huge_pages() {
        use super::advises;
        assert!(advises("glibc.malloc.hugetlb=1:glibc.malloc.arena_max=1"));
        assert!(advises("glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"));
        assert!(advises("glibc.malloc.hugetlb=0:glibc.malloc.hugetlb=1"));
        assert!(!advises("glibc.malloc.hugetlb=1:glibc.malloc.hugetlb=0"));
        assert!(!advises("glibc.malloc.hugetlb=2"));
        assert!(!advises("glibc.malloc.hugetlb"));
        assert!(!advises("glibc.malloc.arena_max=1"));
        assert!(!advises(""));
    }
}
