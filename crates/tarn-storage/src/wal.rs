//! The write-ahead log: checksummed, length-prefixed records in numbered generation files.
//!
//! A record is `[u32 payload length][u32 CRC-32 of payload][payload]`, little endian. A
//! generation file starts with an 8-byte magic. Writers append whole groups of records and call
//! `fdatasync` once per group (group commit) before any writer in the group is answered. On
//! replay the log is read up to the first record that is short or fails its checksum, and
//! the file is cut there: with one fsync per group, only the last group can be torn by a
//! crash, and it was never acknowledged.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use tarn_common::TarnError;

const MAGIC: &[u8; 8] = b"TARNWAL1";

/// Record buffers kept for the next records once theirs are written: a batch's record is
/// megabytes, and a fresh buffer for each made the kernel fault in (and zero) every page of
/// it again, a twentieth of ingest's CPU.
static RECORD_BUFFERS: parking_lot::Mutex<Vec<Vec<u8>>> = parking_lot::Mutex::new(Vec::new());
/// At most this many buffers are kept, each at most `MAX_KEPT_BUFFER` bytes.
const KEPT_BUFFERS: usize = 8;
const MAX_KEPT_BUFFER: usize = 64 << 20;

/// An empty buffer for a framed record of about `capacity` bytes, reusing a kept one.
pub fn record_buffer(capacity: usize) -> Vec<u8> {
    let mut buf = RECORD_BUFFERS.lock().pop().unwrap_or_default();
    buf.clear();
    buf.reserve(capacity);
    buf
}

/// Keeps a written record's buffer for [`record_buffer`].
pub fn recycle_record_buffer(buf: Vec<u8>) {
    if buf.capacity() <= MAX_KEPT_BUFFER {
        let mut kept = RECORD_BUFFERS.lock();
        if kept.len() < KEPT_BUFFERS {
            kept.push(buf);
        }
    }
}
const KIND_INSERT: u8 = 1;
const KIND_DELETE: u8 = 2;

/// A document as logged: the resolved special fields and the document's JSON text.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedDoc {
    pub id: String,
    pub event_time: i64,
    pub meta: Vec<u8>,
    /// JSON text of the document (special fields in it are ignored on replay).
    pub json: Vec<u8>,
}

/// One logged operation.
#[derive(Debug, Clone, PartialEq)]
pub enum WalRecord {
    /// Documents to add or replace, and the source positions they were read up to, logged
    /// together so that a source never re-reads or skips what was stored.
    Insert {
        docs: Vec<LoggedDoc>,
        checkpoints: Vec<(String, String)>,
    },
    /// Documents to delete by `_id`.
    Delete { ids: Vec<String> },
}

fn put_u32(buf: &mut Vec<u8>, v: u32) {
    buf.extend_from_slice(&v.to_le_bytes());
}
fn put_bytes(buf: &mut Vec<u8>, b: &[u8]) {
    put_u32(buf, b.len() as u32);
    buf.extend_from_slice(b);
}

impl WalRecord {
    /// Appends the framed record to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0u8; 8]);
        match self {
            WalRecord::Insert { docs, checkpoints } => {
                out.push(KIND_INSERT);
                put_u32(out, docs.len() as u32);
                for d in docs {
                    put_bytes(out, d.id.as_bytes());
                    out.extend_from_slice(&d.event_time.to_le_bytes());
                    put_bytes(out, &d.meta);
                    put_bytes(out, &d.json);
                }
                put_u32(out, checkpoints.len() as u32);
                for (k, v) in checkpoints {
                    put_bytes(out, k.as_bytes());
                    put_bytes(out, v.as_bytes());
                }
            }
            WalRecord::Delete { ids } => {
                out.push(KIND_DELETE);
                put_u32(out, ids.len() as u32);
                for id in ids {
                    put_bytes(out, id.as_bytes());
                }
            }
        }
        let payload_len = (out.len() - start - 8) as u32;
        let crc = crc32fast::hash(&out[start + 8..]);
        out[start..start + 4].copy_from_slice(&payload_len.to_le_bytes());
        out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }

    fn decode(payload: &[u8]) -> Option<WalRecord> {
        let mut r = Reader { b: payload, i: 0 };
        let rec = match r.u8()? {
            KIND_INSERT => {
                let n = r.u32()? as usize;
                let mut docs = Vec::with_capacity(n.min(1 << 16));
                for _ in 0..n {
                    let id = r.string()?;
                    let event_time = i64::from_le_bytes(r.take(8)?.try_into().ok()?);
                    let meta = r.bytes()?.to_vec();
                    let json = r.bytes()?.to_vec();
                    docs.push(LoggedDoc {
                        id,
                        event_time,
                        meta,
                        json,
                    });
                }
                let n = r.u32()? as usize;
                let mut checkpoints = Vec::with_capacity(n.min(1 << 10));
                for _ in 0..n {
                    checkpoints.push((r.string()?, r.string()?));
                }
                WalRecord::Insert { docs, checkpoints }
            }
            KIND_DELETE => {
                let n = r.u32()? as usize;
                let mut ids = Vec::with_capacity(n.min(1 << 16));
                for _ in 0..n {
                    ids.push(r.string()?);
                }
                WalRecord::Delete { ids }
            }
            _ => return None,
        };
        (r.i == payload.len()).then_some(rec)
    }
}

struct Reader<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.i..self.i.checked_add(n)?)?;
        self.i += n;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }
}

/// The path of generation `gen` in `dir`.
pub fn generation_path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("{generation:016}.wal"))
}

/// The generations present in `dir`, ascending.
pub fn list_generations(dir: &Path) -> Result<Vec<u64>, TarnError> {
    let mut gens = Vec::new();
    if !dir.exists() {
        return Ok(gens);
    }
    for e in std::fs::read_dir(dir)? {
        let name = e?.file_name();
        let name = name.to_string_lossy();
        if let Some(stem) = name.strip_suffix(".wal")
            && let Ok(g) = stem.parse::<u64>()
        {
            gens.push(g);
        }
    }
    gens.sort_unstable();
    Ok(gens)
}

/// An open generation file being appended to.
pub struct WalWriter {
    file: File,
    pub generation: u64,
    bytes: u64,
}

impl WalWriter {
    /// Creates (or reopens for append, after replay) generation `gen` in `dir`.
    pub fn open(dir: &Path, generation: u64) -> Result<WalWriter, TarnError> {
        std::fs::create_dir_all(dir)?;
        let path = generation_path(dir, generation);
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)?;
        let mut len = file.metadata()?.len();
        if len == 0 {
            file.write_all(MAGIC)?;
            file.sync_data()?;
            sync_dir(dir)?;
            len = MAGIC.len() as u64;
        }
        Ok(WalWriter {
            file,
            generation,
            bytes: len,
        })
    }

    /// Writes already framed records and makes them durable before returning.
    pub fn append_durable(&mut self, framed: &[u8]) -> Result<(), TarnError> {
        self.append_all_durable(&[framed])
    }

    /// Writes several pieces of framed records, in order, with one sync for all of them
    /// (group commit without first copying the pieces into one buffer).
    pub fn append_all_durable(&mut self, pieces: &[&[u8]]) -> Result<(), TarnError> {
        for p in pieces {
            self.file.write_all(p)?;
        }
        self.file.sync_data()?;
        self.bytes += pieces.iter().map(|p| p.len() as u64).sum::<u64>();
        Ok(())
    }

    /// Bytes in this generation file.
    pub fn len(&self) -> u64 {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.bytes <= MAGIC.len() as u64
    }
}

/// Reads every valid record of a generation file, cutting off a torn tail.
pub fn read_generation(path: &Path) -> Result<Vec<WalRecord>, TarnError> {
    let mut file = OpenOptions::new().read(true).write(true).open(path)?;
    let mut data = Vec::new();
    file.read_to_end(&mut data)?;
    if data.len() < MAGIC.len() {
        // Crashed while creating the file: nothing in it was ever acknowledged.
        file.set_len(0)?;
        return Ok(Vec::new());
    }
    if &data[..8] != MAGIC {
        return Err(TarnError::internal(format!(
            "{} is not a tarn log file",
            path.display()
        )));
    }
    let mut records = Vec::new();
    let mut i = MAGIC.len();
    while i < data.len() {
        let valid = (|| {
            let header = data.get(i..i + 8)?;
            let len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
            let crc = u32::from_le_bytes(header[4..8].try_into().ok()?);
            let payload = data.get(i + 8..i + 8 + len)?;
            (crc32fast::hash(payload) == crc).then_some(())?;
            Some((WalRecord::decode(payload)?, 8 + len))
        })();
        match valid {
            Some((rec, n)) => {
                records.push(rec);
                i += n;
            }
            None => {
                tracing::warn!(path = %path.display(), offset = i, dropped = data.len() - i, "cutting off a torn log tail (a write that was never acknowledged)");
                file.set_len(i as u64)?;
                file.seek(SeekFrom::End(0))?;
                file.sync_data()?;
                break;
            }
        }
    }
    Ok(records)
}

/// fsyncs a directory so that a file created or renamed in it survives a crash.
pub fn sync_dir(dir: &Path) -> Result<(), TarnError> {
    File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insert(id: &str) -> WalRecord {
        WalRecord::Insert {
            docs: vec![LoggedDoc {
                id: id.into(),
                event_time: -5,
                meta: b"{}".to_vec(),
                json: b"{\"a\":1}".to_vec(),
            }],
            checkpoints: vec![("shard-1".into(), "42".into())],
        }
    }

    #[test]
    fn records_survive_and_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = WalWriter::open(dir.path(), 7).unwrap();
        let mut buf = Vec::new();
        insert("a").encode_into(&mut buf);
        WalRecord::Delete {
            ids: vec!["a".into(), "é".into()],
        }
        .encode_into(&mut buf);
        w.append_durable(&buf).unwrap();
        let mut torn = Vec::new();
        insert("b").encode_into(&mut torn);
        w.append_durable(&torn[..torn.len() - 3]).unwrap();
        drop(w);
        let path = generation_path(dir.path(), 7);
        let recs = read_generation(&path).unwrap();
        assert_eq!(
            recs,
            vec![
                insert("a"),
                WalRecord::Delete {
                    ids: vec!["a".into(), "é".into()]
                }
            ]
        );
        // The torn tail is gone, so appending again yields a clean log.
        let mut w = WalWriter::open(dir.path(), 7).unwrap();
        w.append_durable(&torn).unwrap();
        assert_eq!(read_generation(&path).unwrap().len(), 3);
        assert_eq!(list_generations(dir.path()).unwrap(), vec![7]);
    }

    #[test]
    fn corrupt_byte_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = WalWriter::open(dir.path(), 1).unwrap();
        let mut buf = Vec::new();
        insert("a").encode_into(&mut buf);
        w.append_durable(&buf).unwrap();
        drop(w);
        let path = generation_path(dir.path(), 1);
        let mut data = std::fs::read(&path).unwrap();
        let last = data.len() - 2;
        data[last] ^= 0xff;
        std::fs::write(&path, &data).unwrap();
        assert!(read_generation(&path).unwrap().is_empty());
    }
}
