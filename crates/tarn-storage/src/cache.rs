//! The column cache: decoded columns of sealed segments, kept within a memory budget.
//!
//! Sealed segments live in compressed files (see [`crate::segment::SegmentFile`]); a query
//! decodes only the columns it reads, and keeps them here so the next query does not decode
//! them again. One cache serves the whole process, so the budget bounds all collections
//! together. The least recently used columns are evicted first.
//!
//! A segment just sealed brings only the columns queries read lately ([`ColumnCache::read_lately`]):
//! most of a tweet's hundreds of columns are never queried, and decoded they take about
//! seven times their compressed size on disk.

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use arrow::array::ArrayData;
use arrow::array::{Array, ArrayRef};
use parking_lot::Mutex;

/// A column of a segment file: the file's process-unique key and the column's index.
pub type ColumnKey = (u64, usize);

/// Decoded columns by [`ColumnKey`], least recently used evicted first.
pub struct ColumnCache {
    inner: Mutex<Inner>,
}

struct Inner {
    budget: usize,
    used: usize,
    clock: u64,
    entries: HashMap<ColumnKey, Cached>,
    /// Entries by the time they were last used.
    by_use: BTreeMap<u64, ColumnKey>,
    /// When queries last read a file column of each name (any collection's).
    read_at: HashMap<String, Instant>,
}

/// How long a column name read by a query counts as read lately.
pub const READ_LATELY: Duration = Duration::from_secs(600);
/// Names remembered at most; past it, those not read lately are forgotten first.
const MAX_NAMES: usize = 100_000;

struct Cached {
    array: ArrayRef,
    bytes: usize,
    used_at: u64,
}

/// The process's column cache.
pub fn column_cache() -> &'static ColumnCache {
    static CACHE: OnceLock<ColumnCache> = OnceLock::new();
    CACHE.get_or_init(|| ColumnCache::new(default_budget()))
}

/// A quarter of the machine's memory, or 1 GiB where that cannot be read.
fn default_budget() -> usize {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("MemTotal:"))?;
            line.split_whitespace().nth(1)?.parse::<usize>().ok()
        })
        .map_or(1 << 30, |kb| kb * 1024 / 4)
}

/// Bytes the array's values take, counting each buffer's length rather than its
/// allocation: a column decoded without compression is a slice of its mapped file, whose
/// allocation is the whole file.
pub fn array_bytes(array: &dyn Array) -> usize {
    fn data_bytes(d: &ArrayData) -> usize {
        d.buffers().iter().map(|b| b.len()).sum::<usize>()
            + d.nulls().map_or(0, |n| n.buffer().len())
            + d.child_data().iter().map(data_bytes).sum::<usize>()
    }
    data_bytes(&array.to_data())
}

impl ColumnCache {
    pub fn new(budget: usize) -> ColumnCache {
        ColumnCache {
            inner: Mutex::new(Inner {
                budget,
                used: 0,
                clock: 0,
                entries: HashMap::new(),
                by_use: BTreeMap::new(),
                read_at: HashMap::new(),
            }),
        }
    }

    /// Sets the budget in bytes, evicting at once what no longer fits.
    pub fn set_budget(&self, bytes: usize) {
        let mut inner = self.inner.lock();
        inner.budget = bytes;
        inner.evict();
    }

    pub fn budget(&self) -> usize {
        self.inner.lock().budget
    }

    /// Bytes of the columns held now.
    pub fn used(&self) -> usize {
        self.inner.lock().used
    }

    pub fn get(&self, key: ColumnKey) -> Option<ArrayRef> {
        let mut inner = self.inner.lock();
        inner.clock += 1;
        let now = inner.clock;
        let cached = inner.entries.get_mut(&key)?;
        let before = std::mem::replace(&mut cached.used_at, now);
        let array = cached.array.clone();
        inner.by_use.remove(&before);
        inner.by_use.insert(now, key);
        Some(array)
    }

    /// Keeps `array` as the newest entry; older ones go if the budget is exceeded. A
    /// column larger than the whole budget is not kept.
    pub fn insert(&self, key: ColumnKey, array: ArrayRef) {
        let bytes = array_bytes(array.as_ref());
        let mut inner = self.inner.lock();
        if bytes > inner.budget {
            return;
        }
        inner.remove(key);
        inner.clock += 1;
        let now = inner.clock;
        inner.used += bytes;
        inner.by_use.insert(now, key);
        inner.entries.insert(
            key,
            Cached {
                array,
                bytes,
                used_at: now,
            },
        );
        inner.evict();
    }

    /// Notes that a query reads file columns named `names` now.
    pub fn note_read<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        let now = Instant::now();
        let mut inner = self.inner.lock();
        // Stale names are swept at most once a call: with the map full of fresh ones, a
        // sweep per new name would scan it again for each.
        let mut swept = false;
        for name in names {
            if let Some(at) = inner.read_at.get_mut(name) {
                *at = now;
                continue;
            }
            if inner.read_at.len() >= MAX_NAMES {
                if !swept {
                    inner
                        .read_at
                        .retain(|_, at| now.duration_since(*at) < READ_LATELY);
                    swept = true;
                }
                if inner.read_at.len() >= MAX_NAMES {
                    continue;
                }
            }
            inner.read_at.insert(name.to_owned(), now);
        }
    }

    /// Whether a query read a file column of this name (in any collection) within
    /// [`READ_LATELY`]: a segment just sealed brings only such columns into the cache.
    pub fn read_lately(&self, name: &str) -> bool {
        self.inner
            .lock()
            .read_at
            .get(name)
            .is_some_and(|at| at.elapsed() < READ_LATELY)
    }

    /// Drops the columns of a file that is gone.
    pub fn forget_file(&self, file: u64, columns: usize) {
        let mut inner = self.inner.lock();
        for c in 0..columns {
            inner.remove((file, c));
        }
    }
}

impl Inner {
    fn remove(&mut self, key: ColumnKey) {
        if let Some(old) = self.entries.remove(&key) {
            self.by_use.remove(&old.used_at);
            self.used -= old.bytes;
        }
    }

    fn evict(&mut self) {
        while self.used > self.budget {
            let Some((_, key)) = self.by_use.pop_first() else {
                break;
            };
            if let Some(old) = self.entries.remove(&key) {
                self.used -= old.bytes;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use std::sync::Arc;

    fn column(n: usize) -> ArrayRef {
        Arc::new(Int64Array::from_iter_values(0..n as i64))
    }

    #[test]
    fn evicts_the_least_recently_used_within_the_budget() {
        let cache = ColumnCache::new(2_000);
        cache.insert((1, 0), column(100)); // 800 bytes each
        cache.insert((1, 1), column(100));
        assert!(cache.get((1, 0)).is_some()); // (1, 1) is now the oldest
        cache.insert((2, 0), column(100));
        assert_eq!(cache.used(), 1_600);
        assert!(cache.get((1, 1)).is_none());
        assert!(cache.get((1, 0)).is_some() && cache.get((2, 0)).is_some());
        cache.insert((3, 0), column(1_000)); // larger than the budget: not kept
        assert!(cache.get((3, 0)).is_none());
        cache.forget_file(1, 2);
        assert_eq!(cache.used(), 800);
        cache.set_budget(100);
        assert_eq!(cache.used(), 0);
        assert!(cache.get((2, 0)).is_none());
    }

    #[test]
    fn remembers_the_names_queries_read() {
        let cache = ColumnCache::new(2_000);
        assert!(!cache.read_lately("user.screen_name"));
        cache.note_read(["user.screen_name", "text"]);
        assert!(cache.read_lately("user.screen_name") && cache.read_lately("text"));
        assert!(!cache.read_lately("user.name"));
        // Past the cap, names not read lately make room; these all were, so no more fit.
        cache.note_read(
            (0..MAX_NAMES)
                .map(|i| format!("c{i}"))
                .collect::<Vec<_>>()
                .iter()
                .map(String::as_str),
        );
        assert_eq!(cache.inner.lock().read_at.len(), MAX_NAMES);
        assert!(cache.read_lately("text"), "a name read lately is kept");
        cache
            .inner
            .lock()
            .read_at
            .values_mut()
            .for_each(|at| *at -= READ_LATELY);
        assert!(!cache.read_lately("text"), "read too long ago");
        cache.note_read(["user.name"]);
        assert!(cache.read_lately("user.name"));
        assert_eq!(
            cache.inner.lock().read_at.len(),
            1,
            "the stale names were forgotten"
        );
    }

    #[test]
    fn counts_a_slice_by_its_length() {
        let big = column(10_000);
        assert_eq!(array_bytes(big.slice(0, 10).as_ref()), 80);
    }
}
