//! Files written around the page cache (`O_DIRECT`): sealed segment files, which ingest
//! writes once and queries mostly read through the column cache.
//!
//! A buffered write copies every byte into page-cache pages the kernel must find first.
//! Sealing writes each segment once and never rereads most of it (queries find the columns
//! they read lately in the column cache, filled from memory at the seal), so those pages
//! only cost: `perf` put the copy into them at 5-7% of a Kafka drain's CPU on this kind of
//! VM, where a page freshly given to the page cache is a fault the host must serve.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

/// Offsets, lengths and buffer addresses of direct writes are multiples of this: a page,
/// which every block size Linux filesystems use divides.
const ALIGN: usize = 4096;
/// Bytes copied into the aligned buffer, and written, at a time.
const CHUNK: usize = 1 << 20;

/// One aligned block of the bounce buffer.
#[repr(C, align(4096))]
#[derive(Clone, Copy)]
struct Block([u8; ALIGN]);

/// Writes `bytes` as the whole of a new file at `path` (truncating one there), bypassing the
/// page cache for all but its last partial block, and fsyncs it. `Ok(false)`, with nothing
/// left at `path`, when the filesystem does not take direct writes (tmpfs, say): the caller
/// writes the file another way.
pub fn write_uncached(path: &Path, bytes: &[u8]) -> io::Result<bool> {
    let file = match OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(false),
        Err(e) => return Err(e),
    };
    match write_through(&file, path, bytes) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            drop(file);
            std::fs::remove_file(path)?;
            Ok(false)
        }
        other => other.map(|()| true),
    }
}

/// The aligned part through `file` (opened `O_DIRECT`) from an aligned bounce buffer, the
/// rest through a second, buffered descriptor; then both made durable.
fn write_through(file: &File, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let aligned = bytes.len() / ALIGN * ALIGN;
    let mut blocks = vec![Block([0; ALIGN]); CHUNK.min(aligned) / ALIGN];
    // SAFETY: `Block` is plain bytes with no padding, so its array is `len * ALIGN` bytes
    // that may be viewed, and written, as `u8`.
    let bounce: &mut [u8] = unsafe {
        std::slice::from_raw_parts_mut(blocks.as_mut_ptr().cast::<u8>(), blocks.len() * ALIGN)
    };
    let mut at = 0;
    while at < aligned {
        let n = (aligned - at).min(bounce.len());
        bounce[..n].copy_from_slice(&bytes[at..at + n]);
        file.write_all_at(&bounce[..n], at as u64)?;
        at += n;
    }
    if at < bytes.len() {
        let tail = OpenOptions::new().write(true).open(path)?;
        tail.write_all_at(&bytes[at..], at as u64)?;
        tail.sync_all()?;
    }
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_files_of_every_alignment_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        for len in [0, 1, 4095, 4096, 4097, CHUNK, 3 * CHUNK + 4096 + 17] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            // Over a longer file, which the write must truncate.
            std::fs::write(&path, vec![9u8; 3 * CHUNK + 50_000]).unwrap();
            let direct = write_uncached(&path, &bytes).unwrap();
            assert!(
                direct,
                "the test directory's filesystem takes direct writes"
            );
            assert_eq!(std::fs::read(&path).unwrap(), bytes, "{len} bytes");
        }
    }
}
