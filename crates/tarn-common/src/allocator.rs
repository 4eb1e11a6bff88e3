//! The allocator's settings for ingest: mimalloc keeps freed memory a while and maps no
//! transparent huge pages. The `tarn` binary and the storage bench both call [`tune`] first.

/// `mi_option_purge_delay`: its position in `mi_option_e` of mimalloc.h (v2 and v3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
/// `mi_option_allow_thp`: its position in `mi_option_e` of v3's mimalloc.h (the version
/// libmimalloc-sys builds without its `v2` feature).
const MI_OPTION_ALLOW_THP: libmimalloc_sys::mi_option_t = 43;

/// Keeps freed memory for ten seconds before returning it to the OS. With a delay of 10 ms
/// (mimalloc v2's default), the memory of each ingest batch went back to the OS and was
/// faulted in (and zeroed by the kernel) again for the next: `MIMALLOC_PURGE_DELAY=1000
/// tarn bench` ingested 1.5x faster. A second (v3's default) still let the memory of each
/// sealed segment go back before the next one had grown into it: a segment of 65,536 tweets
/// fills in 1.5-3 seconds at full speed, and `tarn bench --kafka` counted 315-381 page
/// faults per MB drained at 1 s against 220-242 at 10 s. Pinned here so that it holds
/// whichever version is built.
///
/// Also no transparent huge pages: mimalloc asks for them on its arenas, so each first touch
/// of fresh memory made the kernel zero 2 MiB. `perf` showed 15% of the demo's CPU in
/// `clear_page_erms`; without them `tarn bench --live` used 16% less server CPU and
/// `tarn bench` ingested 10% more per CPU-second with 16% less peak memory.
///
/// The environment variables, when set, still win.
///
/// The option alone only stops new arenas from asking for huge pages: mimalloc reserved its
/// first arena (with `MADV_HUGEPAGE`) before `main`, and disables THP for the process only
/// while starting up. So the process asks the kernel itself (`PR_SET_THP_DISABLE`, which
/// holds for memory mapped already); `perf` still showed `do_huge_pmd_anonymous_page` under
/// mimalloc's page allocation without it.
pub fn tune() {
    for (option, variable, value) in [
        (MI_OPTION_PURGE_DELAY, "MIMALLOC_PURGE_DELAY", 10_000),
        (MI_OPTION_ALLOW_THP, "MIMALLOC_ALLOW_THP", 0),
    ] {
        if std::env::var_os(variable).is_none() {
            // SAFETY: mi_option_set stores an integer option that mimalloc reads later.
            unsafe { libmimalloc_sys::mi_option_set(option, value) }
        }
    }
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none()
        && let Err(e) = disable_transparent_huge_pages()
    {
        eprintln!("cannot disable transparent huge pages: {e}");
    }
}

/// Returns the memory freed so far to the OS at once, instead of after the purge delay: so
/// that the resident size measures the memory still in use.
pub fn release_freed() {
    // SAFETY: mi_collect only frees and returns memory no allocation uses.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

#[cfg(target_os = "linux")]
fn disable_transparent_huge_pages() -> std::io::Result<()> {
    // SAFETY: prctl with PR_SET_THP_DISABLE only sets a flag of this process.
    match unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

#[cfg(not(target_os = "linux"))]
fn disable_transparent_huge_pages() -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The option positions are mimalloc's: read where they are, its defaults come back.
    #[test]
    fn allocator_options_are_where_mimalloc_keeps_them() {
        // SAFETY: mi_option_get reads an integer option.
        let (purge_delay, allow_thp) = unsafe {
            (
                libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY),
                libmimalloc_sys::mi_option_get(MI_OPTION_ALLOW_THP),
            )
        };
        assert_eq!(purge_delay, 1000, "mi_option_purge_delay moved");
        assert_eq!(allow_thp, 1, "mi_option_allow_thp moved");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_process_runs_without_transparent_huge_pages() {
        disable_transparent_huge_pages().unwrap();
        // SAFETY: PR_GET_THP_DISABLE reads the flag.
        let flag = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
        assert_eq!(flag, 1);
    }
}
