//! Durability: `kill -9` the broker in the middle of a produce load, restart it on the same
//! data directory, and check that every acknowledged record is there, at its offset, with its
//! bytes; that the killed broker's uncommitted objects are cleaned up; and that offsets go on
//! densely after the restart.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use silt_client::{Producer, ProducerConfig, ProducerRecord};
use silt_metadata::catalog::Catalog;
use silt_metadata::{EmbeddedStore, SystemClock};
use silt_tests::load::{fast_path_load, per_record_load};
use silt_tests::{BrokerOptions, BrokerProcess, Checker, event_value, wait_for};

const PARTITIONS: u32 = 4;

fn segment_files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let root = dir.join("objects").join("segments");
    let Ok(brokers) = std::fs::read_dir(&root) else {
        return out;
    };
    for broker in brokers.flatten() {
        for file in std::fs::read_dir(broker.path()).unwrap().flatten() {
            let name = file.file_name().to_string_lossy().into_owned();
            if name.ends_with(".seg") {
                out.push(format!(
                    "{}/{}",
                    broker.file_name().to_string_lossy(),
                    name.trim_end_matches(".seg")
                ));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_no_acknowledged_record() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(BrokerOptions::new(dir.path())).await;
    let client = broker.client().await;
    client
        .create_topic("d", PARTITIONS, None, None)
        .await
        .unwrap();

    let checker = Arc::new(Checker::new());
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for p in 0..PARTITIONS {
        let (client, checker, stop) = (client.clone(), checker.clone(), stop.clone());
        if p == PARTITIONS - 1 {
            load.push(tokio::spawn(per_record_load(
                "d", client, p, checker, stop, 0,
            )));
        } else {
            load.push(tokio::spawn(fast_path_load(
                "d", client, p, checker, stop, 0,
            )));
        }
    }
    // Kill in the middle of the load, once a good number of acks came back.
    let c = checker.clone();
    wait_for("acks before the kill", Duration::from_secs(60), || {
        let n = c.acked_count();
        async move { (n >= 5_000).then_some(()) }
    })
    .await;
    let options = broker.kill9();
    stop.store(true, Ordering::Relaxed);
    for task in load {
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("load stops")
            .unwrap();
    }
    let acked_before = checker.acked_count();
    assert!(acked_before >= 5_000);

    // An object a flush uploaded but never committed (the broker died between PUT and commit).
    let orphan_dir = dir.path().join("objects/segments/broker-0");
    std::fs::create_dir_all(&orphan_dir).unwrap();
    let orphan = orphan_dir.join("0000000000000001-000099999999.seg");
    std::fs::write(&orphan, b"uploaded but never committed").unwrap();

    let broker = BrokerProcess::start(options).await;
    let client = broker.client().await;
    wait_for("orphan cleanup", Duration::from_secs(30), || {
        let gone = !orphan.exists();
        async move { gone.then_some(()) }
    })
    .await;
    let report = checker.verify(&client, "d").await;
    if report.duplicated > 0 {
        checker.dump_duplicates(&client, "d").await;
    }
    report.assert_clean();
    assert_eq!(report.acked, acked_before);

    // Offsets continue densely after the restart.
    let stop = Arc::new(AtomicBool::new(false));
    let more = tokio::spawn(fast_path_load(
        "d",
        client.clone(),
        0,
        checker.clone(),
        stop.clone(),
        1,
    ));
    let c = checker.clone();
    wait_for("acks after the restart", Duration::from_secs(60), || {
        let n = c.acked_count();
        async move { (n >= acked_before + 500).then_some(()) }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    more.await.unwrap();
    // Partition 0's new records were sent with sequence numbers starting again at 0: check
    // their placement (dense, present) but not their order against the first run's.
    let report = checker.verify(&client, "d").await;
    assert_eq!(
        (report.lost, report.duplicated, report.gaps),
        (0, 0, 0),
        "{report:?}"
    );

    // Stop gracefully, then compare the objects on disk with the committed segment index.
    let (status, _) = broker.terminate(Duration::from_secs(30));
    assert!(status.success(), "graceful stop exits 0: {status}");
    let meta = EmbeddedStore::open(&dir.path().join("metadata.redb"), SystemClock::new()).unwrap();
    let committed: HashSet<String> = Catalog::new(meta, "default")
        .load_segments()
        .await
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let on_disk: HashSet<String> = segment_files(dir.path()).into_iter().collect();
    assert!(!committed.is_empty());
    let uncommitted: Vec<&String> = on_disk.difference(&committed).collect();
    assert!(
        uncommitted.is_empty(),
        "objects without a commit: {uncommitted:?}"
    );
    let missing: Vec<&String> = committed.difference(&on_disk).collect();
    assert!(
        missing.is_empty(),
        "committed segments without an object: {missing:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_and_data_survive_a_graceful_restart() {
    let dir = tempfile::tempdir().unwrap();
    let options = BrokerOptions {
        linger_ms: 60_000,
        ..BrokerOptions::new(dir.path())
    };
    let broker = BrokerProcess::start(options).await;
    let client = broker.client().await;
    client
        .create_topic("keep", 2, Some(3_600_000), Some(4096))
        .await
        .unwrap();
    let producer = Producer::new(&client, "keep", ProducerConfig::default())
        .await
        .unwrap();
    let mut acks = Vec::new();
    for i in 0..100u64 {
        acks.push(
            producer
                .send(ProducerRecord::new(event_value(i, 300)).with_partition((i % 2) as u32))
                .await
                .unwrap(),
        );
    }
    // With a 60 s linger nothing is durable yet: wait until the broker holds all of it in its
    // WAL cache; SIGTERM must then flush and commit it before exiting.
    wait_for("records in the WAL cache", Duration::from_secs(30), || {
        let client = client.clone();
        async move { (client.stats().await.ok()?.wal_cache_bytes >= 30_000).then_some(()) }
    })
    .await;
    let stopping = tokio::task::spawn_blocking(move || broker.terminate(Duration::from_secs(30)));
    let mut offsets = Vec::new();
    for ack in acks {
        offsets.push(
            tokio::time::timeout(Duration::from_secs(30), ack)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    let (status, options) = stopping.await.unwrap();
    assert!(status.success(), "{status}");

    let broker = BrokerProcess::start(options).await;
    let client = broker.client().await;
    let described = client.describe_topic("keep").await.unwrap();
    let topic = described.topic.unwrap();
    assert_eq!(
        (topic.partitions, topic.retention_ms, topic.max_record_bytes),
        (2, 3_600_000, 4096)
    );
    let hwms: Vec<i64> = described
        .partitions
        .iter()
        .map(|p| p.high_watermark)
        .collect();
    assert_eq!(hwms, [50, 50]);
    for p in 0..2 {
        let stored = silt_tests::read_partition(&client, "keep", p).await;
        for (i, (partition, offset)) in offsets.iter().enumerate() {
            if *partition == p {
                assert_eq!(stored[offset], Bytes::from(event_value(i as u64, 300)));
            }
        }
    }
}

/// One system call of an strace log, in the order it completed.
#[derive(Debug)]
struct Syscall {
    name: String,
    /// The path of the first argument: the fd's path (`strace -y`) or the first path string.
    path: String,
    /// Every byte of the line after the call's name (arguments, with `\xNN` decoded).
    args: Vec<u8>,
    ok: bool,
}

/// Decodes `\xNN` escapes (`strace -xx` prints every string byte that way).
fn unescape(line: &str) -> Vec<u8> {
    let b = line.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && b.get(i + 1) == Some(&b'x')
            && i + 3 < b.len()
            && let Ok(v) = u8::from_str_radix(&line[i + 2..i + 4], 16)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// Parses `strace -f -y -xx` output into completed calls, joining `<unfinished ...>` halves.
fn parse_strace(text: &str) -> Vec<Syscall> {
    let mut pending: std::collections::HashMap<String, String> = Default::default();
    let mut calls = Vec::new();
    for line in text.lines() {
        // `<pid> <call>`; strace pads short pids with spaces.
        let Some((pid, rest)) = line.split_once(' ') else {
            continue;
        };
        let rest = rest.trim_start();
        let whole = if let Some(head) = rest.strip_suffix(" <unfinished ...>") {
            pending.insert(pid.to_string(), head.to_string());
            continue;
        } else if rest.starts_with("<... ") {
            let Some(head) = pending.remove(pid) else {
                continue;
            };
            let tail = rest.split_once(" resumed>").map_or("", |(_, t)| t);
            format!("{head}{tail}")
        } else {
            rest.to_string()
        };
        let Some((name, args)) = whole.split_once('(') else {
            continue;
        };
        let args = unescape(args);
        let text = String::from_utf8_lossy(&args);
        // `fd<path>` or `"path"`.
        let path = match (text.find('<'), text.find('"')) {
            (Some(lt), q) if q.is_none_or(|q| lt < q) => {
                text[lt + 1..].split('>').next().unwrap_or("").to_string()
            }
            (_, Some(q)) => text[q + 1..].split('"').next().unwrap_or("").to_string(),
            _ => String::new(),
        };
        let ok = text.trim_end().ends_with("= 0") || {
            // pwrite64 returns the byte count.
            text.rsplit("= ")
                .next()
                .and_then(|n| n.trim().parse::<i64>().ok())
                .is_some_and(|n| n >= 0)
        };
        calls.push(Syscall {
            name: name.to_string(),
            path,
            args,
            ok,
        });
    }
    calls
}

/// `strace` following threads, with fd paths and whole strings (hex), tracing `calls` into
/// `trace`.
fn strace_wrapper(strace: &Path, calls: &str, trace: &Path) -> Vec<String> {
    [
        strace.to_string_lossy().as_ref(),
        "-f",
        "-y",
        "-xx",
        "-qq",
        "-s",
        "1048576",
        "-e",
        "signal=none",
        "-e",
        &format!("trace={calls}"),
        "-o",
        trace.to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec()
}

/// The value a traced call returned (`... = N`).
fn returned(call: &Syscall) -> Option<i64> {
    let text = String::from_utf8_lossy(&call.args);
    text.rsplit("= ").next()?.trim().parse().ok()
}

/// Checks that the directory `parent` was fsynced after the rename at `renamed` and before the
/// first metadata write (to `redb`) naming `id`; returns that write's position.
fn synced_then_committed(
    calls: &[Syscall],
    renamed: usize,
    parent: &str,
    redb: &str,
    id: &str,
    what: &str,
) -> usize {
    let dir_synced = calls[renamed..]
        .iter()
        .position(|c| matches!(c.name.as_str(), "fsync" | "fdatasync") && c.ok && c.path == parent)
        .map(|i| i + renamed)
        .unwrap_or_else(|| panic!("{what}: directory {parent} never fsynced after the rename"));
    let committed_at = calls
        .iter()
        .position(|c| {
            c.name.starts_with("pwrite") && c.path == redb && contains(&c.args, id.as_bytes())
        })
        .unwrap_or_else(|| panic!("{what}: no metadata write names it"));
    assert!(
        dir_synced < committed_at,
        "{what}: the metadata write (call {committed_at}) came before the directory fsync \
         (call {dir_synced})"
    );
    committed_at
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A power cut, unlike kill -9, loses what is only in the page cache. The embedded default
/// must therefore fsync each segment object — its file, and the directory entry that names
/// it — before the metadata commit that acknowledges it starts. The broker runs under strace;
/// for every committed segment the trace must show: the staged file fsynced, renamed to its
/// final name, the directory fsynced, and only then the first write of the metadata database
/// that names the segment (which redb then makes durable with fdatasync).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acked_segment_is_fsynced_with_its_directory_before_its_commit() {
    let Some(strace) =
        silt_tests::require_tool("strace", "SILT_STRACE_BIN", &[], "apt-get install strace")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let trace = dir.path().join("trace.txt");
    let mut options = BrokerOptions::new(&data);
    options.wrapper = strace_wrapper(
        &strace,
        "fsync,fdatasync,rename,renameat,renameat2,pwrite64,pwritev,pwritev2",
        &trace,
    );
    let broker = BrokerProcess::start(options).await;
    let client = broker.client().await;
    client.create_topic("p", 2, None, None).await.unwrap();
    let producer = Producer::new(&client, "p", ProducerConfig::default())
        .await
        .unwrap();
    // Several flushes, each acknowledged before the next starts.
    for round in 0..4u64 {
        let ack = producer
            .send(ProducerRecord::new(event_value(round, 200)).with_partition((round % 2) as u32))
            .await
            .unwrap();
        ack.await.unwrap();
    }
    let (status, _) = broker.stop().await;
    assert!(status.success(), "{status}");

    let calls = parse_strace(&std::fs::read_to_string(&trace).unwrap());
    let data = std::fs::canonicalize(&data).unwrap();
    let segments_dir = data.join("objects").join("segments");
    let redb = data.join("metadata.redb").to_string_lossy().into_owned();
    let committed = segment_files(&data);
    assert!(committed.len() >= 4, "4 acked flushes: {committed:?}");
    for id in &committed {
        let object = segments_dir.join(format!("{id}.seg"));
        let object = object.to_string_lossy();
        let parent = segments_dir.join(id.split('/').next().unwrap());
        let parent = parent.to_string_lossy();
        let renamed = calls
            .iter()
            .position(|c| {
                c.name.starts_with("rename") && c.ok && contains(&c.args, object.as_bytes())
            })
            .unwrap_or_else(|| panic!("{object} was never renamed into place"));
        let staged = String::from_utf8_lossy(&calls[renamed].args)
            .split('"')
            .nth(1)
            .unwrap_or_default()
            .to_string();
        let file_synced = calls[..renamed]
            .iter()
            .any(|c| c.name == "fsync" && c.ok && c.path == staged);
        assert!(
            file_synced,
            "{object}: its data ({staged}) was not fsynced before the rename"
        );
        let committed_at = synced_then_committed(&calls, renamed, &parent, &redb, id, &object);
        let durable = calls[committed_at..]
            .iter()
            .any(|c| matches!(c.name.as_str(), "fsync" | "fdatasync") && c.ok && c.path == redb);
        assert!(durable, "{object}: its metadata commit was never fsynced");
    }
    // The directories that hold the data are durable too.
    for d in [data.clone(), data.join("objects"), segments_dir] {
        let d = d.to_string_lossy();
        assert!(
            calls
                .iter()
                .any(|c| matches!(c.name.as_str(), "fsync" | "fdatasync") && c.path == *d),
            "{d} was never fsynced"
        );
    }
}

/// Compaction's objects share the disk with the flushes' fsyncs, so on a local directory they
/// are written at most 256 KiB at a time, each piece on the disk (`fdatasync`) before the next
/// is written — never a burst of dirty pages that one fsync sends at once, delaying the
/// flushes' fsyncs behind it — and, like a flush's object, fsynced, renamed into place and
/// their directory fsynced before the swap that makes readers use them is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacted_objects_are_written_piecewise_and_durable_before_their_swap() {
    let Some(strace) =
        silt_tests::require_tool("strace", "SILT_STRACE_BIN", &[], "apt-get install strace")
    else {
        return;
    };
    const PIECE: i64 = 256 << 10;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let trace = dir.path().join("trace.txt");
    // About 3 MiB in one partition, in several flushes, written with compaction off.
    let broker = BrokerProcess::start(BrokerOptions::new(&data).fast_lifecycle("0")).await;
    let client = broker.client().await;
    client.create_topic("c", 1, Some(-1), None).await.unwrap();
    let producer = Producer::new(&client, "c", ProducerConfig::default())
        .await
        .unwrap();
    for round in 0..6u64 {
        let mut acks = Vec::new();
        for i in 0..4 {
            let record = ProducerRecord::new(event_value(round * 4 + i, 128 << 10));
            acks.push(producer.send(record).await.unwrap());
        }
        for ack in acks {
            ack.await.unwrap();
        }
    }
    drop(producer);
    let (status, options) = broker.stop().await;
    assert!(status.success(), "{status}");

    // Restarted under strace with compaction on: the whole partition is due at once.
    let mut options = BrokerOptions {
        args: Vec::new(),
        ..options
    }
    .fast_lifecycle("8MiB");
    options.wrapper = strace_wrapper(
        &strace,
        "write,fsync,fdatasync,rename,renameat,renameat2,pwrite64,pwritev,pwritev2",
        &trace,
    );
    let broker = BrokerProcess::start(options).await;
    wait_for("a compaction swap", Duration::from_secs(60), || {
        let broker = &broker;
        async move {
            let text = broker.scrape().await;
            let swapped = silt_tests::metric_sum(
                &text,
                "silt_compactions_total",
                &[("outcome", "committed")],
            );
            (swapped >= 1.0).then_some(())
        }
    })
    .await;
    let (status, _) = broker.stop().await;
    assert!(status.success(), "{status}");

    let calls = parse_strace(&std::fs::read_to_string(&trace).unwrap());
    let objects = std::fs::canonicalize(data.join("objects")).unwrap();
    let parts_dir = objects.join("parts").to_string_lossy().into_owned();
    let redb = std::fs::canonicalize(data.join("metadata.redb"))
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let renames: Vec<usize> = (0..calls.len())
        .filter(|&i| {
            let c = &calls[i];
            c.name.starts_with("rename") && c.ok && contains(&c.args, parts_dir.as_bytes())
        })
        .collect();
    assert!(
        !renames.is_empty(),
        "no compacted object was renamed into place"
    );
    let mut largest = 0;
    for renamed in renames {
        let args = String::from_utf8_lossy(&calls[renamed].args).into_owned();
        let mut quoted = args.split('"').skip(1).step_by(2);
        let (staged, object) = (quoted.next().unwrap(), quoted.next().unwrap());
        assert!(staged.ends_with(".partial"), "staged as {staged}");
        let name = object
            .strip_prefix(&format!("{}/", objects.display()))
            .unwrap();
        // Its writes, at most a piece each, and never more than two pieces' worth written
        // since the file's last fdatasync (a sync follows once a piece's worth is unsynced).
        let writes: Vec<usize> = (0..renamed)
            .filter(|&i| calls[i].name == "write" && calls[i].path == staged)
            .collect();
        assert!(!writes.is_empty(), "{name}: no write of {staged}");
        let (mut bytes, mut unsynced, mut syncs) = (0, 0, 0);
        for c in &calls[writes[0]..renamed] {
            if c.path != staged {
                continue;
            }
            if c.name == "write" {
                let len = returned(c).unwrap();
                assert!(len > 0 && len <= PIECE, "{name}: a write of {len} bytes");
                bytes += len;
                unsynced += len;
                assert!(
                    unsynced < 2 * PIECE,
                    "{name}: {unsynced} bytes written since the last fdatasync"
                );
            } else if c.name == "fdatasync" && c.ok {
                unsynced = 0;
                syncs += 1;
            }
        }
        assert!(
            syncs >= bytes / (2 * PIECE),
            "{name}: {syncs} fdatasyncs over {bytes} bytes"
        );
        largest = largest.max(bytes);
        assert!(
            calls[*writes.last().unwrap()..renamed]
                .iter()
                .any(|c| c.name == "fsync" && c.ok && c.path == staged),
            "{name}: not fsynced before its rename"
        );
        let parent = std::path::Path::new(object).parent().unwrap();
        synced_then_committed(
            &calls,
            renamed,
            &parent.to_string_lossy(),
            &redb,
            name,
            name,
        );
    }
    assert!(
        largest > 2 * PIECE,
        "the compacted object ({largest} bytes) spans several pieces"
    );
}
