//! The allocators' tuning. The daemon's own memory comes from mimalloc (the global allocator of
//! the binary, `main.rs`); glibc's malloc still serves SQLite and the C library.
//!
//! Loading a large config briefly needs several times what the loaded config keeps (the YAML
//! tree, the slots validation samples). With glibc's allocator, what the config keeps was left
//! scattered over the pages the tree had used, and none of them could be returned: measured at
//! 100,000 schedules, 115 MB in use held 351 MB. mimalloc keeps objects of one size together
//! on pages of their own and returns the pages that empty.
//!
//! mimalloc v3 (libmimalloc-sys's default). v2 was measured too, with the `scale` benchmark:
//! 39.4 MiB at 10,000 schedules (v3 41.2), but 139.6 at 100,000 (v3 124.8) and 193.6 after 10
//! reloads of 1 % there (v3 145.1). The example config idles at about 23 MiB with either
//! (glibc's: 12.6): per-thread heaps cost more than a small config saves.
//!
//! Freed pages go back to the system 10 ms after they empty ([`PURGE_DELAY_MS`]). The
//! mimalloc built here defaults to 1 s, times 10 for its arenas, and an idle daemon rarely
//! gets there: what loading freed stayed resident, and `mi_collect(true)` after the load did
//! not hand it back. Measured with the example's `rss` loop (`BENCHMARKS.md`, issue 13's
//! sixth step): 10,000 schedules 32–36 → 26–27 MiB at READY, 100,000 94–99 → 89 MiB; peak 49–67
//! → 28–33 MiB and 152–167 → 103–118 MiB; READY unchanged at 10,000 (0.21 s), 0.1–0.15 s
//! later at 100,000.
//!
//! Tried and not kept (on v3): handing freed pages back at once (`purge_delay` 0): READY at
//! 100,000 schedules 1.9 → 3.3 s, the kernel zeroing again every page reused while loading,
//! for 2 MiB less than 10 ms; committing arenas as used (`arena_eager_commit` 0) only helps
//! when set before the first allocation, by environment. Copying what a config keeps into a
//! fresh mimalloc heap after the load (so that it no longer shares pages with what the load
//! freed): no difference in RSS at either size, READY 0.1 s later.

/// How long a page that emptied stays with mimalloc before it goes back to the system:
/// mimalloc's documented default (`mimalloc.h`), not the 1 s this build has.
pub const PURGE_DELAY_MS: std::ffi::c_long = 10;

/// `mi_option_purge_delay` in the `mi_option_e` of mimalloc v3's `mimalloc.h`
/// (libmimalloc-sys names no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Turns transparent huge pages off for the process, before its first allocation: `main.rs`
/// calls this from the binary's `.init_array`, which the C runtime runs before `main` (and so
/// before Rust's runtime allocates anything).
///
/// A huge page is resident 2 MiB at a time, used or not, and a page that empties only in part
/// cannot go back; a daemon that mostly waits gains nothing from them. mimalloc asked the
/// kernel for them on its arenas (`madvise(MADV_HUGEPAGE)`), which the default `madvise`
/// setting of `/sys/kernel/mm/transparent_hugepage/enabled` grants: measured with the `scale`
/// benchmark (10,000 schedules), 28 of the 39 MiB the daemon had in anonymous memory were huge
/// pages. It is built with `no_thp` now (Cargo.toml), so it no longer asks; this covers the
/// `always` setting. `PR_SET_THP_DISABLE` applies at each fault, so a huge page faulted
/// before it stays: set from `tune_allocator` (the earlier place), the first arena already had
/// one, and the example config idled at 16.2 MiB instead of 12.5.
pub fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl(PR_SET_THP_DISABLE, 1) only sets a flag of the calling process; it takes
    // no pointer. A kernel without it answers EINVAL, which changes nothing. It allocates
    // nothing, so it may run before main.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// Caps glibc's allocator at two arenas: each thread would otherwise get an arena of its own,
/// in which freed memory stays reserved. Turns transparent huge pages off
/// ([`disable_transparent_huge_pages`]; again, for a binary without the constructor).
///
/// And sets mimalloc's purge delay to [`PURGE_DELAY_MS`], unless `MIMALLOC_PURGE_DELAY` in
/// the environment sets it.
pub fn tune_allocator() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: mi_option_set only stores an option's value; mimalloc reads it at each purge.
        unsafe {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS);
        }
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes a tuning parameter of the process's allocator.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    disable_transparent_huge_pages();
}

/// A config was loaded (or refused): what loading freed goes back to the system.
pub fn loaded() {
    // SAFETY: mi_collect only frees mimalloc's own unused pages; it takes no pointer.
    unsafe {
        libmimalloc_sys::mi_collect(true);
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of the allocator's own heap to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn purge_delay() -> std::ffi::c_long {
        // SAFETY: mi_option_get only reads an option's value.
        unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) }
    }

    /// The option's number is the one mimalloc reads `MIMALLOC_PURGE_DELAY` into: a copy of
    /// this test binary, started with it set, reports it under that number.
    #[test]
    fn the_purge_delay_option_is_the_one_mimalloc_reads_from_its_environment() {
        if std::env::var_os("WECOM_NOTIFY_PURGE_DELAY_CHILD").is_some() {
            println!("purge_delay={}", purge_delay());
            return;
        }
        let exe = std::env::current_exe().unwrap();
        let output = std::process::Command::new(exe)
            .args([
                "--exact",
                "daemon::memory::tests::the_purge_delay_option_is_the_one_mimalloc_reads_from_its_environment",
                "--nocapture",
            ])
            .env("WECOM_NOTIFY_PURGE_DELAY_CHILD", "1")
            .env("MIMALLOC_PURGE_DELAY", "1234")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{stdout}");
        assert!(stdout.contains("purge_delay=1234"), "{stdout}");
    }
}
