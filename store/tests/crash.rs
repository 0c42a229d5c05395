//! Crash test: a child process appends with many concurrent writers and prints every
//! acknowledged message; the parent kills it with SIGKILL at a random moment, reopens the store
//! and checks that everything acknowledged survived, densely numbered, and deduplicates.
//!
//! It runs on a store of one partition and on one of three (three writers, three databases):
//! `COURIER_CRASH_CYCLES` sets the number of kill cycles of each (default 25).

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use courier_store::{AppendRequest, Store, StoreConfig};
use courier_wire::frame::{Direction, MessageKind};

/// Who sent an acknowledged message: (writer, cycle, n).
type Origin = (u32, u32, u32);

const WRITERS: u32 = 16;
const CHATS: u32 = 8;

fn request(writer: u32, cycle: u32, n: u32, chat: u64) -> AppendRequest {
    let mut id = [0u8; 16];
    id[..4].copy_from_slice(&writer.to_be_bytes());
    id[4..8].copy_from_slice(&cycle.to_be_bytes());
    id[8..12].copy_from_slice(&n.to_be_bytes());
    AppendRequest {
        sender_user: format!("w{writer}"),
        sender_device: 1,
        client_msg_id: id,
        chat_id: chat,
        kind: MessageKind::Text,
        body: Bytes::from(format!("writer {writer} cycle {cycle} n {n}")),
        attachments: vec![],
    }
}

fn config(dir: &str, partitions: usize) -> StoreConfig {
    let mut c = StoreConfig::new(dir);
    c.sweep_interval = None;
    c.partitions = partitions;
    c
}

/// The child: runs only when the parent sets `CRASH_CHILD_DIR`.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var("CRASH_CHILD_DIR") else {
        return;
    };
    let cycle: u32 = std::env::var("CRASH_CYCLE").unwrap().parse().unwrap();
    let partitions: usize = std::env::var("CRASH_PARTITIONS").unwrap().parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let store = Store::open(config(&dir, partitions)).unwrap();
        assert_eq!(store.partitions(), partitions);
        // Writer w talks in chat (w % CHATS) with "hub"; every chat has two writers.
        let mut chats = Vec::new();
        for c in 0..CHATS {
            chats.push(
                store
                    .create_group(
                        &format!("w{c}"),
                        "crash",
                        (0..WRITERS)
                            .map(|w| format!("w{w}"))
                            .filter(|w| *w != format!("w{c}"))
                            .collect(),
                    )
                    .await
                    .unwrap()
                    .id,
            );
        }
        println!("READY");
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let store = store.clone();
            let chat = chats[(w % CHATS) as usize];
            tasks.push(tokio::spawn(async move {
                for n in 0.. {
                    let a = store.append(request(w, cycle, n, chat)).await.unwrap();
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "ACK {w} {n} {} {}", a.chat_id, a.seq).unwrap();
                    out.flush().unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn acknowledged_messages_survive_sigkill() {
    survive_sigkill(1);
}

#[test]
fn acknowledged_messages_survive_sigkill_with_three_partitions() {
    survive_sigkill(3);
}

fn survive_sigkill(partitions: usize) {
    let cycles: u32 = std::env::var("COURIER_CRASH_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(25);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap().to_owned();
    let exe = std::env::current_exe().unwrap();
    let mut rng = Rng(SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut checked = 0usize;
    // chat -> seq -> (writer, cycle, n): everything ever acknowledged.
    let mut acked: HashMap<u64, BTreeMap<u64, Origin>> = HashMap::new();
    let started = Instant::now();

    for cycle in 0..cycles {
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env("CRASH_CHILD_DIR", &path)
            .env("CRASH_CYCLE", cycle.to_string())
            .env("CRASH_PARTITIONS", partitions.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Kill at a random moment between 10 and 150 ms after the writers start.
        // (The test harness prints its own lines, and "test crash_child ... " before ours.)
        while !rx
            .recv_timeout(Duration::from_secs(30))
            .expect("child started")
            .ends_with("READY")
        {}
        std::thread::sleep(Duration::from_millis(10 + rng.next() % 140));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        let mut this_cycle = Vec::new();
        for line in rx.try_iter() {
            let Some(at) = line.find("ACK ") else {
                continue;
            };
            let f: Vec<&str> = line[at..].split(' ').collect();
            // A line cut off by the kill was never complete, so it was never an acknowledgement.
            if f.len() != 5 || f[0] != "ACK" {
                continue;
            }
            let [w, n, chat, seq] = [f[1], f[2], f[3], f[4]].map(|x| x.parse::<u64>().unwrap());
            let entry = (w as u32, cycle, n as u32);
            let prev = acked.entry(chat).or_default().insert(seq, entry);
            assert!(
                prev.is_none() || prev == Some(entry),
                "seq {seq} of chat {chat} acknowledged twice"
            );
            this_cycle.push((chat, seq, entry));
        }

        rt.block_on(async {
            let store = Store::open(config(&path, partitions)).unwrap();
            // Every acknowledged message of this cycle is present with its seq and body...
            let mut by_chat: BTreeMap<u64, Vec<(u64, Origin)>> = BTreeMap::new();
            for &(chat, seq, e) in &this_cycle {
                by_chat.entry(chat).or_default().push((seq, e));
            }
            for (chat, mut acks) in by_chat {
                acks.sort_unstable();
                let (first, last) = (acks[0].0, acks[acks.len() - 1].0);
                let reader = format!("w{}", acks[0].1 .0);
                let mut stored = HashMap::new();
                let mut anchor = first - 1;
                while anchor < last {
                    let (page, more) = store
                        .history(&reader, chat, Direction::After, anchor, 1000)
                        .unwrap();
                    for m in &page {
                        stored.insert(m.seq, m.body.clone());
                    }
                    anchor = page.last().map_or(last, |m| m.seq);
                    if !more {
                        break;
                    }
                }
                for (seq, (w, c, n)) in acks {
                    let body = stored
                        .get(&seq)
                        .unwrap_or_else(|| panic!("acknowledged seq {seq} of chat {chat} lost"));
                    assert_eq!(*body, Bytes::from(format!("writer {w} cycle {c} n {n}")));
                }
            }
            // ... and a retry of it is answered as a duplicate with the same seq.
            let mut retries = tokio::task::JoinSet::new();
            for &(chat, seq, (w, c, n)) in &this_cycle {
                let store = store.clone();
                retries.spawn(async move {
                    let again = store.append(request(w, c, n, chat)).await.unwrap();
                    assert!(
                        again.duplicate && again.seq == seq && again.chat_id == chat,
                        "retry of {w}/{c}/{n} not deduplicated"
                    );
                });
            }
            while let Some(r) = retries.join_next().await {
                r.unwrap();
                checked += 1;
            }
            store.close().await;
        });
    }

    // Finally every chat's seqs are dense from 1, and every acknowledgement ever made holds.
    rt.block_on(async {
        let store = Store::open(config(&path, partitions)).unwrap();
        for (&chat, seqs) in &acked {
            let reader = format!("w{}", seqs.values().next().unwrap().0);
            let mut expect = 1;
            let mut anchor = 0;
            loop {
                let (page, more) = store
                    .history(&reader, chat, Direction::After, anchor, 1000)
                    .unwrap();
                for m in &page {
                    assert_eq!(m.seq, expect, "chat {chat} has a gap before {}", m.seq);
                    if let Some((w, c, n)) = seqs.get(&m.seq) {
                        assert_eq!(m.body, Bytes::from(format!("writer {w} cycle {c} n {n}")));
                    }
                    expect += 1;
                }
                anchor = expect - 1;
                if !more {
                    break;
                }
            }
            assert!(
                expect > *seqs.keys().last().unwrap(),
                "chat {chat} lost its newest acknowledged messages"
            );
        }
        store.close().await;
    });
    let total: usize = acked.values().map(BTreeMap::len).sum();
    eprintln!(
        "crash test, {partitions} partition(s): {cycles} SIGKILL cycles, {checked} acknowledged messages re-read and re-sent, {total} checked for density, in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(total > 0, "the child acknowledged nothing");
}
