//! The allocators' settings for ingest: mimalloc and glibc's malloc (which librdkafka and
//! other C libraries use) keep freed memory for reuse, and no transparent huge pages are
//! mapped. The `tarn` binary and the storage bench both call [`tune`] first.

/// `mi_option_purge_delay`: its position in `mi_option_e` of mimalloc.h (v2 and v3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
/// `mi_option_allow_thp`: its position in `mi_option_e` of v3's mimalloc.h (the version
/// libmimalloc-sys builds without its `v2` feature).
const MI_OPTION_ALLOW_THP: libmimalloc_sys::mi_option_t = 43;

/// Keeps freed memory for five minutes before returning it to the OS. On this kind of
/// machine (a VM whose host backs guest memory on first touch) memory returned to the OS
/// and faulted in again costs more than anything else ingest does with it: the kernel's
/// `clear_page_erms` was 21% of a Kafka drain's CPU.
/// - With a delay of 10 ms (mimalloc v2's default), the memory of each ingest batch went
///   back to the OS and was faulted in again for the next: `MIMALLOC_PURGE_DELAY=1000
///   tarn bench` ingested 1.5x faster.
/// - With a second (v3's default), the memory of each sealed segment went back before the
///   next one had grown into it: `tarn bench --kafka` counted 315-381 page faults per MB
///   drained at 1 s against 220-242 at 10 s.
/// - With ten seconds, memory still came back under a steady drain, because mimalloc v3
///   purges when the delay after the first free expires, and then purges all memory free
///   at that moment, including what was freed a millisecond before and is about to be used
///   again: the second half of the drain took 74-102 faults per MB, against 42-67 with
///   purging off.
///
/// So a steady ingest pays for faulting its free memory in again once per delay, and
/// memory a burst used goes back to the OS at most this long after. Pinned here so that it
/// holds whichever mimalloc version is built.
///
/// glibc's malloc serves librdkafka's buffers (each fetch response is read into one). Left
/// to itself it returns the top of a thread's heap to the OS (`MADV_DONTNEED`) whenever
/// more than twice its mmap threshold is free there, and the next responses are received
/// into freshly faulted pages (`_copy_to_iter` took 17-32% of the drain's page faults). So
/// blocks up to 32 MiB (as high as glibc's adaptive threshold ever goes) come from its
/// heaps, which keep up to 1 GiB free. Both settings together took the drain's second half to 34-38 faults per MB.
///
/// Also no transparent huge pages: mimalloc asks for them on its arenas, so each first touch
/// of fresh memory made the kernel zero 2 MiB. `perf` showed 15% of the demo's CPU in
/// `clear_page_erms`; without them `tarn bench --live` used 16% less server CPU and
/// `tarn bench` ingested 10% more per CPU-second with 16% less peak memory.
///
/// The environment variables (`MIMALLOC_*`, `GLIBC_TUNABLES`), when set, still win.
///
/// The option alone only stops new arenas from asking for huge pages: mimalloc reserved its
/// first arena (with `MADV_HUGEPAGE`) before `main`, and disables THP for the process only
/// while starting up. So the process asks the kernel itself (`PR_SET_THP_DISABLE`, which
/// holds for memory mapped already); `perf` still showed `do_huge_pmd_anonymous_page` under
/// mimalloc's page allocation without it.
pub fn tune() {
    for (option, variable, value) in [
        (
            MI_OPTION_PURGE_DELAY,
            "MIMALLOC_PURGE_DELAY",
            PURGE_DELAY_MS,
        ),
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
    if std::env::var_os("GLIBC_TUNABLES").is_none()
        && let Err(e) = keep_glibc_heaps()
    {
        eprintln!("cannot set glibc's malloc thresholds: {e}");
    }
}

/// How long mimalloc keeps freed memory before returning it to the OS (see [`tune`]).
const PURGE_DELAY_MS: std::ffi::c_long = 5 * 60 * 1000;
/// Blocks up to this size come from glibc's heaps rather than a mapping of their own: the
/// highest its adaptive threshold goes on 64-bit (`DEFAULT_MMAP_THRESHOLD_MAX`). `mallopt`
/// takes more (glibc 2.36 accepted 64 MiB), but a thread's heap holds 64 MiB at most, so
/// blocks near that are mapped on their own anyway.
const GLIBC_MMAP_THRESHOLD: usize = 32 << 20;
/// glibc returns the top of a heap to the OS only when more than this is free there.
const GLIBC_TRIM_THRESHOLD: usize = 1 << 30;

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_glibc_heaps() -> std::io::Result<()> {
    // The mmap threshold first: setting either fixes both (glibc stops adapting them), and a
    // trim threshold alone would leave the mmap threshold at its initial 128 KiB.
    for (param, value) in [
        (libc::M_MMAP_THRESHOLD, GLIBC_MMAP_THRESHOLD),
        (libc::M_TRIM_THRESHOLD, GLIBC_TRIM_THRESHOLD),
    ] {
        // SAFETY: mallopt sets a tuning parameter of glibc's malloc; any value is valid.
        if unsafe { libc::mallopt(param, value as libc::c_int) } != 1 {
            return Err(std::io::Error::other(format!(
                "mallopt({param}, {value}) was refused"
            )));
        }
    }
    Ok(())
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_glibc_heaps() -> std::io::Result<()> {
    Ok(())
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

    /// A 16 MiB block freed and taken again is the same memory, still mapped: glibc's
    /// default maps a block that large on its own and unmaps it when freed, so touching the
    /// next one faults in all 4,096 of its pages again.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn glibc_keeps_freed_blocks_for_reuse() {
        const LEN: usize = 16 << 20;
        fn thread_minor_faults() -> i64 {
            // SAFETY: getrusage fills the struct it is given.
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            assert_eq!(
                unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) },
                0
            );
            usage.ru_minflt
        }
        fn touch_block() {
            // SAFETY: the block is LEN bytes, written whole, then freed once.
            unsafe {
                let block = libc::malloc(LEN).cast::<u8>();
                assert!(!block.is_null());
                std::ptr::write_bytes(block, 1, LEN);
                libc::free(block.cast());
            }
        }
        keep_glibc_heaps().unwrap();
        touch_block();
        let before = thread_minor_faults();
        touch_block();
        let faults = thread_minor_faults() - before;
        assert!(
            faults < 256,
            "the block was faulted in again ({faults} faults): glibc returned it"
        );
    }
}
