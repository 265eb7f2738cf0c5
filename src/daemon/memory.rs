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
//! Tried and not kept (on v3): handing freed pages back at once (`purge_delay` 0) brought
//! 10,000 schedules from 44 to 31–33 MiB, but had the kernel zero again every page reused
//! while loading (30 % of the CPU of `check` at 100,000 schedules); committing arenas as used
//! (`arena_eager_commit` 0) only helps when set before the first allocation, by environment.

/// Caps glibc's allocator at two arenas: each thread would otherwise get an arena of its own,
/// in which freed memory stays reserved. And turns transparent huge pages off for the daemon.
///
/// mimalloc asks the kernel for huge pages on its arenas (`madvise(MADV_HUGEPAGE)`), which
/// the default `madvise` setting of `/sys/kernel/mm/transparent_hugepage/enabled` grants: a
/// touched arena is then resident 2 MiB at a time, used or not, and a page that empties only in
/// part cannot go back. Measured with the `scale` benchmark (10,000 schedules), 28 of the
/// 39 MiB the daemon had in anonymous memory were huge pages. A daemon that mostly waits gains
/// nothing from them; `PR_SET_THP_DISABLE` turns them off for every mapping of the process,
/// including the arenas mapped before this call.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes a tuning parameter of the process's allocator.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    #[cfg(target_os = "linux")]
    // SAFETY: prctl(PR_SET_THP_DISABLE, 1) only sets a flag of the calling process; it takes
    // no pointer. A kernel without it answers EINVAL, which changes nothing.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
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
