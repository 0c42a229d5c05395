//! The gateway's CPU per thread over the measured window, from `/proc/<pid>/task/*/stat` (in
//! all, and the part of it spent in the kernel: system calls, and on loopback the network stack
//! that carries the datagrams to their receiver), and the serial bound: the rate over the CPU
//! share of the busiest thread that exists once per node (every thread but the shards'), i.e.
//! the rate at which that thread would be saturated if nothing else stopped the node first
//! (docs/PERFORMANCE.md, "How to measure").

use std::collections::BTreeMap;
use std::time::Instant;

/// CPU time (clock ticks) of each thread of a process, by thread id, with its name.
#[derive(Debug, Clone, Default)]
pub(crate) struct Sample {
    pub(crate) at: Option<Instant>,
    pub(crate) threads: BTreeMap<u32, (String, Ticks)>,
}

/// A thread's CPU time in clock ticks: in user space (`utime`) and in the kernel (`stime`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Ticks {
    pub(crate) user: u64,
    pub(crate) system: u64,
}

impl Ticks {
    fn total(self) -> u64 {
        self.user + self.system
    }

    /// What was used since `start` (a counter never goes back; saturating all the same).
    fn since(self, start: Self) -> Self {
        Self {
            user: self.user.saturating_sub(start.user),
            system: self.system.saturating_sub(start.system),
        }
    }
}

impl std::ops::AddAssign for Ticks {
    fn add_assign(&mut self, other: Self) {
        self.user += other.user;
        self.system += other.system;
    }
}

/// `utime` and `stime` and the name from one `/proc/<pid>/task/<tid>/stat` line. The name is in
/// parentheses and may hold spaces or parentheses itself: the fields follow the last `)`.
fn parse_stat(line: &str) -> Option<(String, Ticks)> {
    let open = line.find('(')?;
    let close = line.rfind(')')?;
    let name = line.get(open + 1..close)?.to_owned();
    let rest: Vec<&str> = line.get(close + 1..)?.split_whitespace().collect();
    // After the name: state (3rd field overall) ... utime is the 14th, stime the 15th.
    let user: u64 = rest.get(11)?.parse().ok()?;
    let system: u64 = rest.get(12)?.parse().ok()?;
    Some((name, Ticks { user, system }))
}

/// Reads every thread of `pid` (an empty sample when it cannot be read).
pub(crate) fn sample(pid: u32) -> Sample {
    let mut s = Sample {
        at: Some(Instant::now()),
        threads: BTreeMap::new(),
    };
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return s;
    };
    for entry in dir.flatten() {
        let Some(tid) = entry.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        if let Ok(line) = std::fs::read_to_string(entry.path().join("stat")) {
            if let Some(t) = parse_stat(&line) {
                s.threads.insert(tid, t);
            }
        }
    }
    s
}

/// Clock ticks per second (`getconf CLK_TCK`; Linux's usual 100 if that cannot be run).
pub(crate) fn ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// What the gateway's threads did over a window.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct ThreadReport {
    /// Per thread name (threads of one name summed, e.g. the shards kept apart by number):
    /// CPU µs per acknowledged message, busiest first.
    pub(crate) us_per_msg: Vec<(String, f64)>,
    /// The part of each of those in the kernel, in the same order.
    pub(crate) kernel_us_per_msg: Vec<(String, f64)>,
    /// All threads together, µs per message.
    pub(crate) total_us_per_msg: f64,
    /// The part of that in the kernel.
    pub(crate) total_kernel_us_per_msg: f64,
    /// The busiest thread that exists once per node, and the serial bound it sets (msg/s).
    pub(crate) serial_thread: String,
    pub(crate) serial_bound_per_s: f64,
}

/// A thread name without its digits: the threads of one kind (`courier-shard-0`,
/// `courier-shard-1`; `courier-part-w0`, ...) share it.
fn stem(name: &str) -> String {
    name.chars().filter(|c| !c.is_ascii_digit()).collect()
}

/// The kinds of thread whose number grows with `--shards`: the shards', and any other kind
/// with at least as many threads as there are shards (more than one): the store's partitions
/// (one per shard by default), each with its writer, commit thread and database worker.
fn per_shard_stems<'n>(names: impl Iterator<Item = &'n str>) -> Vec<String> {
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    for n in names {
        *count.entry(stem(n)).or_default() += 1;
    }
    let shards = count.get("courier-shard-").copied().unwrap_or(1);
    count
        .into_iter()
        .filter(|(s, n)| s.starts_with("courier-shard") || (shards > 1 && *n >= shards))
        .map(|(s, _)| s)
        .collect()
}

/// Each thread of `after` with the ticks it used since `before` (all of them for a thread
/// started in between; a thread that ended in between is not counted).
fn used<'s>(before: &'s Sample, after: &'s Sample) -> impl Iterator<Item = (&'s str, Ticks)> {
    after.threads.iter().map(|(tid, (name, ticks))| {
        let start = before.threads.get(tid).map(|(_, t)| *t).unwrap_or_default();
        (name.as_str(), ticks.since(start))
    })
}

/// CPU µs per message of the whole process between `before` and `after`, `messages` in the
/// window (the load generator's own cost, beside the gateway's).
pub(crate) fn process_us_per_msg(
    before: &Sample,
    after: &Sample,
    messages: u64,
    ticks_per_s: f64,
) -> Option<f64> {
    if messages == 0 || after.threads.is_empty() {
        return None;
    }
    let ticks: u64 = used(before, after).map(|(_, t)| t.total()).sum();
    Some(ticks as f64 * 1e6 / ticks_per_s / messages as f64)
}

/// The report for `messages` acknowledged between `before` and `after`.
pub(crate) fn report(
    before: &Sample,
    after: &Sample,
    messages: u64,
    ticks_per_s: f64,
) -> Option<ThreadReport> {
    let (t0, t1) = (before.at?, after.at?);
    let wall = t1.duration_since(t0).as_secs_f64();
    if messages == 0 || wall <= 0.0 || after.threads.is_empty() {
        return None;
    }
    let us_per_tick = 1e6 / ticks_per_s;
    // Per thread (by id): CPU seconds in the window.
    let mut by_name: BTreeMap<String, Ticks> = BTreeMap::new();
    let mut serial: Option<(String, u64)> = None;
    let replicated = per_shard_stems(after.threads.values().map(|(n, _)| n.as_str()));
    let per_shard = |name: &str| replicated.contains(&stem(name));
    for (name, ticks) in used(before, after) {
        *by_name.entry(name.to_owned()).or_default() += ticks;
        let used = ticks.total();
        if !per_shard(name) && serial.as_ref().is_none_or(|(_, u)| used > *u) {
            serial = Some((name.to_owned(), used));
        }
    }
    let per_msg = |ticks: u64| ticks as f64 * us_per_tick / messages as f64;
    let mut busy: Vec<(&String, Ticks)> = by_name
        .iter()
        .map(|(n, t)| (n, *t))
        .filter(|(_, t)| t.total() > 0)
        .collect();
    busy.sort_by(|a, b| b.1.total().cmp(&a.1.total()).then_with(|| a.0.cmp(b.0)));
    let us_per_msg = busy
        .iter()
        .map(|(n, t)| ((*n).clone(), per_msg(t.total())))
        .collect();
    let kernel_us_per_msg = busy
        .iter()
        .map(|(n, t)| ((*n).clone(), per_msg(t.system)))
        .collect();
    let all = by_name.values().fold(Ticks::default(), |mut all, t| {
        all += *t;
        all
    });
    let total_us_per_msg = per_msg(all.total());
    let total_kernel_us_per_msg = per_msg(all.system);
    // With no once-per-node thread using a whole clock tick in the window, the bound is at
    // least what one tick would set: reported as that floor, marked in the thread's name.
    let (serial_thread, serial_ticks) = match serial {
        Some((name, used)) if used > 0 => (name, used),
        _ => ("none (each under one clock tick)".to_owned(), 1),
    };
    let share = serial_ticks as f64 / ticks_per_s / wall;
    let rate = messages as f64 / wall;
    let serial_bound_per_s = rate / share;
    Some(ThreadReport {
        us_per_msg,
        kernel_us_per_msg,
        total_us_per_msg,
        total_kernel_us_per_msg,
        serial_thread,
        serial_bound_per_s,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_whatever_the_thread_is_called() {
        let line = "4242 (courier-shard-0) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0";
        let ticks = |user, system| Ticks { user, system };
        assert_eq!(
            parse_stat(line),
            Some(("courier-shard-0".into(), ticks(250, 50)))
        );
        let odd = "7 (a (b) c) R 1 2 3 4 5 6 7 8 9 10 11 12 0 0";
        assert_eq!(parse_stat(odd), Some(("a (b) c".into(), ticks(11, 12))));
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S 1 2"), None);
    }

    #[test]
    fn a_process_costs_the_ticks_all_its_threads_used_in_the_window() {
        let at = |secs| Some(Instant::now() + std::time::Duration::from_secs(secs));
        let ticks = |user, system| Ticks { user, system };
        let before = Sample {
            at: at(0),
            threads: [
                (1, ("loadgen".into(), ticks(30, 10))),
                (2, ("tokio-rt".into(), ticks(10, 0))),
            ]
            .into(),
        };
        // Thread 3 started inside the window: all its ticks count, user and kernel alike.
        let after = Sample {
            at: at(10),
            threads: [
                (1, ("loadgen".into(), ticks(100, 40))),
                (2, ("tokio-rt".into(), ticks(50, 10))),
                (3, ("pacer".into(), ticks(20, 30))),
            ]
            .into(),
        };
        // 200 ticks of 10 ms = 2 s of CPU over 100,000 messages: 20 µs each.
        let us = process_us_per_msg(&before, &after, 100_000, 100.0).unwrap();
        assert!((us - 20.0).abs() < 1e-9, "{us}");
        assert_eq!(process_us_per_msg(&before, &after, 0, 100.0), None);
        assert_eq!(
            process_us_per_msg(&before, &Sample::default(), 10, 100.0),
            None
        );
    }

    #[test]
    fn the_serial_bound_is_the_rate_over_the_busiest_once_per_node_threads_share() {
        let t0 = Instant::now();
        let t1 = t0 + std::time::Duration::from_secs(10);
        let mk = |at, v: &[(u32, &str, u64, u64)]| Sample {
            at: Some(at),
            threads: v
                .iter()
                .map(|&(id, n, user, system)| (id, (n.to_owned(), Ticks { user, system })))
                .collect(),
        };
        let before = mk(
            t0,
            &[
                (1, "courier-shard-0", 0, 0),
                (2, "courier-store-c", 80, 20),
                (3, "courier-store-w", 0, 0),
                (4, "courier-idle", 7, 0),
            ],
        );
        // 10 s, 100,000 messages (10K/s); the commit thread used 2 s (a 20% share, 0.5 s of it
        // in the kernel), the writer 1 s, a shard 5 s (3 s in the kernel; not counted for the
        // bound: there is one per shard), an idle thread nothing.
        let after = mk(
            t1,
            &[
                (1, "courier-shard-0", 200, 300),
                (2, "courier-store-c", 230, 70),
                (3, "courier-store-w", 100, 0),
                (4, "courier-idle", 7, 0),
            ],
        );
        let r = report(&before, &after, 100_000, 100.0).unwrap();
        assert_eq!(r.serial_thread, "courier-store-c");
        assert!(
            (r.serial_bound_per_s - 50_000.0).abs() < 1e-6,
            "{}",
            r.serial_bound_per_s
        );
        assert!(
            (r.total_us_per_msg - 80.0).abs() < 1e-9,
            "{}",
            r.total_us_per_msg
        );
        assert!(
            (r.total_kernel_us_per_msg - 35.0).abs() < 1e-9,
            "{}",
            r.total_kernel_us_per_msg
        );
        // Busiest first, the kernel's part in the same order; idle threads left out.
        let names: Vec<&str> = r.us_per_msg.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["courier-shard-0", "courier-store-c", "courier-store-w"]
        );
        let close = |v: &[(String, f64)], want: &[f64]| {
            v.len() == want.len() && v.iter().zip(want).all(|((_, a), b)| (a - b).abs() < 1e-9)
        };
        assert!(
            close(&r.us_per_msg, &[50.0, 20.0, 10.0]),
            "{:?}",
            r.us_per_msg
        );
        assert!(
            close(&r.kernel_us_per_msg, &[30.0, 5.0, 0.0]),
            "{:?}",
            r.kernel_us_per_msg
        );
        assert_eq!(r.kernel_us_per_msg[0].0, "courier-shard-0");
        assert!(report(&before, &after, 0, 100.0).is_none());
    }

    #[test]
    fn partitions_as_many_as_the_shards_are_not_once_per_node() {
        let names = [
            "courier-shard-0",
            "courier-shard-1",
            "courier-part-w0",
            "courier-part-w1",
            "courier-part-c0",
            "courier-part-c1",
            "fjall:worker",
            "fjall:worker",
            "courier-store-sweeper",
            "tokio-runtime-worker",
        ];
        let stems = per_shard_stems(names.into_iter());
        assert_eq!(
            stems,
            [
                "courier-part-c",
                "courier-part-w",
                "courier-shard-",
                "fjall:worker"
            ]
        );
        // With one shard, only the shard replicates.
        let one = per_shard_stems(["courier-shard-0", "courier-store-commit"].into_iter());
        assert_eq!(one, ["courier-shard-"]);
    }
}
