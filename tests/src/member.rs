//! A real `silt consume --group` process: a consumer-group member whose printed records and
//! rebalance log lines the test reads as they come.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

use crate::bin_path;

/// One rebalance as the member logged it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberEvent {
    /// Wall-clock ms since the Unix epoch (the member's log line).
    pub at_ms: i64,
    /// `assigned`, `revoked` or `lost`.
    pub kind: String,
    pub partitions: Vec<u32>,
}

/// A record the member printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRecord {
    pub partition: u32,
    pub offset: i64,
    pub value: String,
}

#[derive(Debug, Default)]
struct Seen {
    records: Vec<MemberRecord>,
    events: Vec<MemberEvent>,
    stderr: Vec<String>,
}

/// A running member. Dropping it kills the process.
#[derive(Debug)]
pub struct MemberProcess {
    pub name: String,
    child: Option<Child>,
    seen: Arc<Mutex<Seen>>,
}

/// Parses `<rfc3339> group <g>: assigned t/0 t/3` (or `revoked`, `lost`, `nothing`).
fn parse_event(line: &str) -> Option<MemberEvent> {
    let (time, rest) = line.split_once(' ')?;
    let at = humantime::parse_rfc3339(time).ok()?;
    let at_ms = at.duration_since(UNIX_EPOCH).ok()?.as_millis() as i64;
    let (_, what) = rest.split_once(": ")?;
    let (kind, list) = what.split_once(' ')?;
    if !matches!(kind, "assigned" | "revoked" | "lost") {
        return None;
    }
    let partitions = list
        .split(' ')
        .filter_map(|tp| tp.rsplit_once('/')?.1.parse().ok())
        .collect();
    Some(MemberEvent {
        at_ms,
        kind: kind.to_string(),
        partitions,
    })
}

impl MemberProcess {
    /// Starts `silt --broker <brokers> consume <topic> --group <group> --print-partition
    /// --print-offset <extra…>`.
    pub fn start(name: &str, brokers: &str, topic: &str, group: &str, extra: &[&str]) -> Self {
        let mut child = Command::new(bin_path("silt"))
            .arg("--broker")
            .arg(brokers)
            .args([
                "consume",
                topic,
                "--group",
                group,
                "--print-partition",
                "--print-offset",
            ])
            .args(extra)
            .env_remove("SILT_BROKER")
            .env("RUST_LOG", "warn,silt_client=info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn silt consume");
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        {
            let seen = seen.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let mut parts = line.splitn(3, '\t');
                    let (Some(p), Some(o), Some(v)) = (parts.next(), parts.next(), parts.next())
                    else {
                        continue;
                    };
                    if let (Ok(partition), Ok(offset)) = (p.parse(), o.parse()) {
                        seen.lock().unwrap().records.push(MemberRecord {
                            partition,
                            offset,
                            value: v.to_string(),
                        });
                    }
                }
            });
        }
        {
            let seen = seen.clone();
            let name = name.to_string();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    eprintln!("[member {name}] {line}");
                    let mut s = seen.lock().unwrap();
                    if let Some(e) = parse_event(&line) {
                        s.events.push(e);
                    }
                    s.stderr.push(line);
                }
            });
        }
        Self {
            name: name.to_string(),
            child: Some(child),
            seen,
        }
    }

    pub fn records(&self) -> Vec<MemberRecord> {
        self.seen.lock().unwrap().records.clone()
    }

    pub fn events(&self) -> Vec<MemberEvent> {
        self.seen.lock().unwrap().events.clone()
    }

    pub fn stderr(&self) -> Vec<String> {
        self.seen.lock().unwrap().stderr.clone()
    }

    /// The partitions the member holds according to its own log.
    pub fn holding(&self) -> Vec<u32> {
        let mut held = std::collections::BTreeSet::new();
        for e in self.events() {
            match e.kind.as_str() {
                "assigned" => held.extend(e.partitions),
                "revoked" => {
                    for p in e.partitions {
                        held.remove(&p);
                    }
                }
                _ => held.clear(),
            }
        }
        held.into_iter().collect()
    }

    fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(child.id().to_string())
                .status();
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn pause(&self) {
        self.signal("STOP");
    }

    pub fn resume(&self) {
        self.signal("CONT");
    }

    /// The exit status, if it exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok()?
    }

    /// SIGTERM and wait (bounded) for the exit.
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        self.signal("TERM");
        self.wait(timeout)
    }

    /// Waits (bounded) for the process to exit by itself.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "member {} did not exit within {timeout:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for MemberProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebalance_lines_parse() {
        let e = parse_event("2026-12-03T23:49:20.843Z group g1: assigned t/0 t/1 t/12").unwrap();
        assert_eq!(e.kind, "assigned");
        assert_eq!(e.partitions, vec![0, 1, 12]);
        assert_eq!(e.at_ms % 1000, 843);
        assert!(
            parse_event("2026-12-03T23:49:20.843Z group g1: revoked nothing")
                .unwrap()
                .partitions
                .is_empty()
        );
        assert!(parse_event("acknowledged 5 of 5 records").is_none());
    }
}
