//! Whether a process listens on a loopback TCP port, read from Linux's `/proc`. `ferry dev`
//! hands each model a port it found free by binding port 0 and letting go; another process may
//! take it before the model binds it (the model then exits and its worker restarts), and until
//! that exit is seen the port answers for somebody else. A worker counts its model ready only
//! once its own model listens there.

use std::collections::{HashMap, HashSet};

/// `st` of a listening socket in `/proc/net/tcp`.
const LISTEN: &str = "0A";

/// Whether `pid` or one of its descendants holds a socket listening on `port`; `None` where
/// `/proc` does not tell.
pub fn listened_by(port: u16, pid: u32) -> Option<bool> {
    let sockets = listening_sockets(port)?;
    if sockets.is_empty() {
        return Some(false);
    }
    Some(
        family(pid)
            .into_iter()
            .any(|member| holds_any(member, &sockets)),
    )
}

/// The inodes of the sockets listening on `port`, IPv4 and IPv6.
fn listening_sockets(port: u16) -> Option<HashSet<u64>> {
    let tables: Vec<String> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .collect();
    if tables.is_empty() {
        return None;
    }
    let rows = tables.iter().flat_map(|table| table.lines().skip(1));
    Some(rows.filter_map(|row| listening_on(row, port)).collect())
}

/// The socket's inode when the table row is a socket listening on `port`. A row reads
/// `sl local_address rem_address st tx_queue:rx_queue tr:when retrnsmt uid timeout inode …`,
/// the address as `HEXADDR:HEXPORT`.
fn listening_on(row: &str, port: u16) -> Option<u64> {
    let fields: Vec<&str> = row.split_whitespace().collect();
    let (local, state, inode) = (fields.get(1)?, fields.get(3)?, fields.get(9)?);
    let local_port = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
    (*state == LISTEN && local_port == port)
        .then(|| inode.parse().ok())
        .flatten()
}

/// `pid` and every process descending from it.
fn family(pid: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for (process, parent) in parents() {
        children.entry(parent).or_default().push(process);
    }
    let mut family = vec![pid];
    let mut next = 0;
    while let Some(member) = family.get(next).copied() {
        family.extend(children.remove(&member).unwrap_or_default());
        next += 1;
    }
    family
}

/// Every process with its parent.
fn parents() -> Vec<(u32, u32)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let process: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // `pid (comm) state ppid …`: the name may hold spaces and parentheses.
            let after_name = &stat[stat.rfind(')')? + 1..];
            let parent = after_name.split_whitespace().nth(1)?.parse().ok()?;
            Some((process, parent))
        })
        .collect()
}

fn holds_any(pid: u32, sockets: &HashSet<u64>) -> bool {
    let Ok(descriptors) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    descriptors.flatten().any(|descriptor| {
        std::fs::read_link(descriptor.path())
            .ok()
            .and_then(|target| {
                let target = target.to_str()?;
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .parse()
                    .ok()
            })
            .is_some_and(|inode| sockets.contains(&inode))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Stdio;
    use tokio::io::AsyncBufReadExt;

    /// Starts `sh -c script` where the script starts a Python listener on a free port and
    /// prints it; the child and the port.
    async fn listener_under(script: &str) -> (tokio::process::Child, u16) {
        let mut child = tokio::process::Command::new("sh")
            .args(["-c", script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("sh");
        let stdout = child.stdout.take().expect("stdout");
        let line = tokio::io::BufReader::new(stdout)
            .lines()
            .next_line()
            .await
            .expect("read")
            .expect("a port");
        (child, line.trim().parse().expect("port"))
    }

    /// Listens on a free port, prints it, and ends when its standard input does (with the test).
    const LISTENER: &str = "import socket, sys; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); print(s.getsockname()[1], flush=True); sys.stdin.read()";

    #[tokio::test]
    async fn a_listener_belongs_to_its_process_and_the_processes_above_it_only() {
        // The shell stays (it waits for Python), as a wrapper script over a model would.
        let (wrapper, port) = listener_under(&format!("python3 -c \"{LISTENER}\"; true")).await;
        let wrapper_pid = wrapper.id().expect("running");
        assert_eq!(
            listened_by(port, wrapper_pid),
            Some(true),
            "through the wrapper"
        );
        assert_eq!(
            listened_by(port, std::process::id()),
            Some(true),
            "its ancestor"
        );
        let bystander = tokio::process::Command::new("sleep")
            .arg("60")
            .kill_on_drop(true)
            .spawn()
            .expect("sleep");
        let bystander_pid = bystander.id().expect("running");
        assert_eq!(listened_by(port, bystander_pid), Some(false), "a sibling");
        let free = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|socket| socket.local_addr())
            .expect("a port")
            .port();
        assert_eq!(
            listened_by(free, wrapper_pid),
            Some(false),
            "nobody listens"
        );
    }

    #[test]
    fn a_table_row_names_a_listening_socket_by_port() {
        let listening = "   1: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4242 1 0000000000000000 100 0 0 10 0";
        let connected = "   2: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000  1000        0 4343 1 0000000000000000 20 4 30 10 -1";
        assert_eq!(listening_on(listening, 8080), Some(4242));
        assert_eq!(listening_on(listening, 8081), None);
        assert_eq!(listening_on(connected, 8080), None);
        let v6 = "   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 77 1 0000000000000000 100 0 0 10 0";
        assert_eq!(listening_on(v6, 8080), Some(77));
    }
}
