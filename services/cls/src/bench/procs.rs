//! Resident memory of the cluster's processes, from `/proc` (Linux).
//!
//! The processes are found from the gateway's port: the process listening on it is the
//! gateway; if its parent is `cls` (`cls up`), the cluster is that parent and its `cls-*`
//! children. Another cluster on the same machine is therefore never counted. Without that
//! (a gateway started by hand), every process whose executable is `cls-gateway`, `cls-query` or
//! `cls-*-worker` is taken, and the report says so. `--pids` overrides both.

use std::fs;
use std::net::SocketAddr;

use serde::Serialize;

/// One process's memory, in KiB.
#[derive(Debug, Clone, Serialize)]
pub struct Memory {
    pub pid: u32,
    pub name: String,
    /// `VmRSS`: resident now.
    pub rss_kib: u64,
    /// `VmHWM`: the most it was ever resident.
    pub peak_rss_kib: u64,
}

/// Which processes to watch, and how they were found.
#[derive(Debug, Clone, Serialize)]
pub struct Watched {
    pub pids: Vec<u32>,
    /// `--pids`, `cls up` (found from the gateway's port) or `by name`.
    pub found_by: &'static str,
}

pub fn discover(gateway: SocketAddr, explicit: &[u32]) -> Watched {
    if !explicit.is_empty() {
        return Watched { pids: explicit.to_vec(), found_by: "--pids" };
    }
    if let Some(gateway_pid) = listening_pid(gateway.port())
        && let Some(parent) = parent_of(gateway_pid).filter(|p| exe_name(*p).as_deref() == Some("cls"))
    {
        let mut pids = vec![parent];
        pids.extend(all_pids().into_iter().filter(|p| parent_of(*p) == Some(parent) && is_cls_service(*p)));
        return Watched { pids, found_by: "cls up (from the gateway's port)" };
    }
    let pids = all_pids().into_iter().filter(|p| is_cls_service(*p)).collect();
    Watched { pids, found_by: "by executable name (may include other clusters)" }
}

/// The memory of every watched process still alive.
pub fn sample(watched: &Watched) -> Vec<Memory> {
    watched.pids.iter().filter_map(|pid| memory(*pid)).collect()
}

fn memory(pid: u32) -> Option<Memory> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    };
    let name = exe_name(pid).unwrap_or_else(|| "?".to_owned());
    Some(Memory { pid, name, rss_kib: field("VmRSS:")?, peak_rss_kib: field("VmHWM:")? })
}

fn is_cls_service(pid: u32) -> bool {
    exe_name(pid).is_some_and(|n| n == "cls-gateway" || n == "cls-query" || (n.starts_with("cls-") && n.ends_with("-worker")))
}

/// The file name of the process's executable (`/proc/<pid>/exe`), without a ` (deleted)` mark
/// left by a rebuild.
fn exe_name(pid: u32) -> Option<String> {
    let target = fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    let name = target.file_name()?.to_string_lossy().into_owned();
    Some(name.trim_end_matches(" (deleted)").to_owned())
}

fn all_pids() -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect()
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The process with a listening TCP socket on `port` (IPv4 or IPv6).
fn listening_pid(port: u16) -> Option<u32> {
    let inodes: Vec<String> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| fs::read_to_string(f).ok())
        .flat_map(|table| {
            table
                .lines()
                .skip(1)
                .filter_map(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    let local_port = u16::from_str_radix(fields.get(1)?.rsplit(':').next()?, 16).ok()?;
                    // State 0A is LISTEN.
                    (local_port == port && *fields.get(3)? == "0A").then(|| fields.get(9).map(|i| (*i).to_owned()))?
                })
                .collect::<Vec<_>>()
        })
        .collect();
    if inodes.is_empty() {
        return None;
    }
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    all_pids().into_iter().find(|pid| {
        fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
            fds.filter_map(|fd| fs::read_link(fd.ok()?.path()).ok())
                .any(|target| wanted.iter().any(|w| target.as_os_str() == w.as_str()))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_memory_and_a_parent() {
        let me = std::process::id();
        let m = memory(me).expect("our own /proc entry");
        assert!(m.rss_kib > 0 && m.peak_rss_kib >= m.rss_kib);
        assert!(parent_of(me).is_some());
    }

    #[test]
    fn a_listening_socket_is_traced_to_its_process() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(listening_pid(port), Some(std::process::id()));
    }
}
