//! A process group whose members die with this process, however it ends — SIGKILL included.
//! A keeper (`sh`) leads the group and waits on a pipe that only this process holds open; the
//! kernel closes the pipe when this process exits, and the keeper then kills the whole group.
//! `ferry dev` starts its nats-server and model processes in one, so none outlives it.
//!
//! Why not a parent-death signal: it needs `unsafe` code between fork and exec (this crate
//! forbids `unsafe`), and it fires when the *thread* that spawned the child exits, which for a
//! runtime's pool threads is any time.
//!
//! Being in a group of their own also keeps the members out of the terminal's foreground group:
//! Ctrl-C reaches `ferry dev` alone, which stops its workers in order.

use std::process::Stdio;

use tokio::process::{Child, ChildStdin, Command};

/// The keeper: blocks until its standard input reaches end of file, then kills its group.
const KEEPER_SCRIPT: &str = "read -r _; kill -KILL 0";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("starting the keeper of the process group (/bin/sh)")]
    Spawn(#[source] std::io::Error),
}

pub struct ProcessGroup {
    id: u32,
    /// Kept only to hold the keeper's standard input open: dropping it kills the group.
    _lifeline: ChildStdin,
    /// Not killed on drop: the keeper ends itself, with the group.
    _keeper: Child,
}

impl ProcessGroup {
    /// Starts the keeper, leader of a new group.
    pub fn start() -> Result<ProcessGroup, Error> {
        let mut keeper = Command::new("/bin/sh")
            .args(["-c", KEEPER_SCRIPT])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(Error::Spawn)?;
        let missing = || Error::Spawn(std::io::Error::other("the keeper has no pid or stdin"));
        let id = keeper.id().ok_or_else(missing)?;
        // The write end is close-on-exec (std creates its pipes so): no other child holds it.
        let lifeline = keeper.stdin.take().ok_or_else(missing)?;
        Ok(ProcessGroup {
            id,
            _lifeline: lifeline,
            _keeper: keeper,
        })
    }

    /// Makes `command` start as a member of the group.
    pub fn enroll<'a>(&self, command: &'a mut Command) -> &'a mut Command {
        // A pid fits in an i32 (the kernel's pid_t); the keeper's is one.
        command.process_group(self.id as i32)
    }

    /// The group's id (the keeper's pid).
    #[cfg(test)]
    pub fn id(&self) -> u32 {
        self.id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn members_are_killed_when_the_group_is_dropped() {
        let group = ProcessGroup::start().expect("sh starts");
        let mut sleeper = Command::new("sleep");
        sleeper.arg("600");
        let mut member = group.enroll(&mut sleeper).spawn().expect("sleep starts");
        let pid = member.id().expect("running");
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
        let pgid: u32 = stat
            .rsplit_once(')')
            .expect("stat fields")
            .1
            .split_whitespace()
            .nth(2)
            .and_then(|field| field.parse().ok())
            .expect("pgid field");
        assert_eq!(pgid, group.id());
        drop(group);
        let status = member.wait().await.expect("waited");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9),
            "killed: {status}"
        );
    }
}
