//! Timestamps as tarn stores them (microseconds since the Unix epoch, UTC) and their text forms;
//! and the process's CPU time, which the benchmarks measure work by.

use chrono::{DateTime, NaiveDate, NaiveDateTime, SecondsFormat, TimeZone, Utc};

/// Now, in microseconds since the epoch.
pub fn now_micros() -> i64 {
    Utc::now().timestamp_micros()
}

/// Formats microseconds since the epoch as Rockset does: `2020-12-03T12:34:56.789000Z`.
pub fn format_micros(us: i64) -> String {
    match Utc.timestamp_micros(us).single() {
        Some(t) => t.to_rfc3339_opts(SecondsFormat::Micros, true),
        None => us.to_string(),
    }
}

/// Parses an ISO-8601 / RFC 3339 timestamp (with `T` or a space, with or without a zone,
/// which then means UTC; or a bare date) into microseconds since the epoch.
pub fn parse_iso8601_micros(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp_micros());
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%.f%#z"] {
        if let Ok(t) = DateTime::parse_from_str(s, fmt) {
            return Some(t.timestamp_micros());
        }
    }
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, fmt) {
            return Some(t.and_utc().timestamp_micros());
        }
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc().timestamp_micros())
}

/// CPU seconds (user and system, all threads) this process has used so far, from
/// `/proc/self/stat`; 0 where that cannot be read. Benchmarks divide work by it, which does
/// not depend on what else the machine runs meanwhile.
pub fn process_cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| stat_cpu_seconds(&s))
        .unwrap_or(0.0)
}

/// CPU seconds this process has spent in the kernel so far (page faults, mostly, under
/// ingest), from `/proc/self/stat`; 0 where that cannot be read.
pub fn process_system_cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| Some(stat_fields(&s)?.nth(12)?.parse::<f64>().ok()? / 100.0))
        .unwrap_or(0.0)
}

/// Seconds the hypervisor has kept this machine's virtual CPUs from running although they
/// had work (`steal` in `/proc/stat`, summed over CPUs); 0 on bare metal or where it cannot
/// be read. A benchmark with much of it measured a busy host, not the program.
pub fn machine_steal_seconds() -> f64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            // cpu user nice system idle iowait irq softirq steal
            let steal = s.lines().next()?.split_whitespace().nth(8)?;
            Some(steal.parse::<f64>().ok()? / 100.0)
        })
        .unwrap_or(0.0)
}

/// Minor page faults this process has taken so far (fresh memory the kernel mapped and
/// zeroed, mostly), from `/proc/self/stat`; 0 where that cannot be read.
pub fn process_minor_faults() -> u64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| stat_minor_faults(&s))
        .unwrap_or(0)
}

/// Field 10 (`minflt`) of a `/proc/.../stat` line.
fn stat_minor_faults(stat: &str) -> Option<u64> {
    stat_fields(stat)?.nth(7)?.parse().ok()
}

/// The fields of a `/proc/.../stat` line after the name (field 2, which may hold spaces and
/// parentheses): the first is field 3.
fn stat_fields(stat: &str) -> Option<std::str::SplitWhitespace<'_>> {
    Some(stat.rsplit_once(')')?.1.split_whitespace())
}

/// CPU seconds (user + system) used so far by this process's live threads whose name starts
/// with `prefix` (a thread's name is at most 15 bytes: `rdk:mock`, `tarn-writer`).
pub fn threads_cpu_seconds(prefix: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with(prefix))
        })
        .filter_map(|t| stat_cpu_seconds(&std::fs::read_to_string(t.path().join("stat")).ok()?))
        .sum()
}

/// The ids of this process's live threads, from `/proc/self/task`; empty where that cannot
/// be read. The threads a call starts are the ids present after it and not before.
pub fn thread_ids() -> std::collections::BTreeSet<u32> {
    std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|t| t.file_name().to_str()?.parse().ok())
        .collect()
}

/// CPU seconds (user + system) used so far by the live threads of this process among `ids`.
pub fn thread_ids_cpu_seconds<'a>(ids: impl IntoIterator<Item = &'a u32>) -> f64 {
    ids.into_iter()
        .filter_map(|id| {
            stat_cpu_seconds(&std::fs::read_to_string(format!("/proc/self/task/{id}/stat")).ok()?)
        })
        .sum()
}

/// User + system time of a `/proc/.../stat` line: fields 14 and 15, in clock ticks (100 a
/// second).
fn stat_cpu_seconds(stat: &str) -> Option<f64> {
    let f: Vec<&str> = stat_fields(stat)?.collect();
    Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_time_and_page_faults_of_the_process_and_cpu_time_of_named_threads() {
        assert_eq!(
            stat_cpu_seconds("42 (a (b) c) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0"),
            Some(3.0)
        );
        assert_eq!(stat_cpu_seconds("42 (x) S 1"), None);
        assert_eq!(
            stat_minor_faults("42 (a (b) c) S 1 2 3 4 5 6 77 8 9 10 250 50 0 0"),
            Some(77)
        );
        assert_eq!(stat_minor_faults("42 (x) S 1"), None);
        let before = process_minor_faults();
        let touched = vec![1u8; 64 << 20];
        assert!(
            process_minor_faults() > before,
            "64 MiB of fresh memory faulted nothing in"
        );
        drop(std::hint::black_box(touched));
        let before_spin = thread_ids();
        let spin = std::thread::Builder::new()
            .name("cpu-test-spin".into())
            .spawn(|| {
                let started = std::time::Instant::now();
                let mut x = 0u64;
                while started.elapsed() < std::time::Duration::from_millis(300) {
                    x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                }
                let used = threads_cpu_seconds("cpu-test-spin");
                let own_id = thread_ids()
                    .into_iter()
                    .find(|id| {
                        std::fs::read_to_string(format!("/proc/self/task/{id}/comm"))
                            .is_ok_and(|c| c.starts_with("cpu-test-spin"))
                    })
                    .expect("the thread is listed");
                (x, used, own_id, thread_ids_cpu_seconds(&[own_id]))
            })
            .expect("a thread starts");
        let (_, used, own_id, used_by_id) = spin.join().expect("the thread ends");
        assert!(used >= 0.1, "the spinning thread used {used} s");
        assert!(used_by_id >= used, "{used_by_id} s by id, {used} s by name");
        assert!(!before_spin.contains(&own_id), "a new thread has a new id");
        assert!(
            before_spin.contains(&(std::process::id())),
            "the main thread is listed"
        );
        assert_eq!(thread_ids_cpu_seconds(&[u32::MAX]), 0.0);
        assert!(process_cpu_seconds() >= used);
        assert_eq!(threads_cpu_seconds("no-such-thread"), 0.0);
        let system = process_system_cpu_seconds();
        assert!(
            system > 0.0 && system <= process_cpu_seconds(),
            "64 MiB faulted in took {system} s in the kernel"
        );
        assert!(machine_steal_seconds() >= 0.0);
    }

    #[test]
    fn formats_like_rockset() {
        assert_eq!(
            format_micros(1_607_000_000_123_000),
            "2020-12-03T12:53:20.123000Z"
        );
    }

    #[test]
    fn parses_iso_forms() {
        let want = Some(1_607_000_000_123_000);
        assert_eq!(parse_iso8601_micros("2020-12-03T12:53:20.123Z"), want);
        assert_eq!(parse_iso8601_micros("2020-12-03T13:53:20.123+01:00"), want);
        assert_eq!(parse_iso8601_micros("2020-12-03 12:53:20.123"), want);
        assert_eq!(
            parse_iso8601_micros("2020-12-03"),
            Some(1_606_953_600_000_000)
        );
        assert_eq!(parse_iso8601_micros("yesterday"), None);
    }

    #[test]
    fn process_cpu_seconds_grow_as_the_process_works() {
        let before = process_cpu_seconds();
        // Clock ticks are 10 ms: work until one more is counted, for at most 5 s.
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while process_cpu_seconds() <= before && started.elapsed().as_secs() < 5 {
            for i in 0..100_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
        }
        assert!(
            process_cpu_seconds() > before,
            "no CPU time counted from /proc/self/stat"
        );
    }
}
