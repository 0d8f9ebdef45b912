//! The thread every child is spawned from.
//!
//! Linux sends a child's parent-death signal when the *thread* that forked it exits, not the
//! process: a child forked from a tokio blocking thread, or from a worker that later leaves the
//! runtime, would be killed when that thread ends. Forking from one thread that lives as long as
//! the process ties every child's life to the host's and to nothing else.

use std::io;
use std::sync::OnceLock;
use std::sync::mpsc;

use tokio::process::{Child, Command};
use tokio::runtime::Handle;
use tokio::sync::oneshot;

use crate::sys;

struct Job {
    command: Command,
    /// The runtime whose process driver will reap the child.
    runtime: Handle,
    reply: oneshot::Sender<io::Result<Spawned>>,
}

/// A child on its way to the launch that asked for it. Dropped before the launch took it — the
/// launch was cancelled while its child started, before or after the answer was sent — it
/// kills the child's group rather than leave it running unrecorded.
struct Spawned(Option<Child>);

impl Spawned {
    fn take(mut self) -> Child {
        self.0.take().expect("a spawned child is taken once")
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Some(pid) = self.0.as_ref().and_then(Child::id) {
            let _ = sys::signal_group(pid, libc::SIGKILL);
        }
    }
}

/// Spawns `command` from the spawner thread, registered with the current runtime.
pub(crate) async fn spawn(command: Command) -> io::Result<Child> {
    let (reply, answer) = oneshot::channel();
    let job = Job { command, runtime: Handle::current(), reply };
    let spawner =
        spawner().ok_or_else(|| io::Error::other("the spawner thread could not start"))?;
    spawner.send(job).map_err(|_| io::Error::other("the spawner thread is gone"))?;
    let spawned =
        answer.await.map_err(|_| io::Error::other("the spawner thread dropped the spawn"))?;
    spawned.map(Spawned::take)
}

fn spawner() -> Option<&'static mpsc::Sender<Job>> {
    static SPAWNER: OnceLock<Option<mpsc::Sender<Job>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("smgr-spawner".to_owned())
            .spawn(move || {
                for mut job in queue {
                    let spawned = {
                        let _runtime = job.runtime.enter();
                        job.command.spawn().map(|child| Spawned(Some(child)))
                    };
                    // A launch that is gone drops the answer, and with it the child.
                    let _ = job.reply.send(spawned);
                }
            })
            .ok()?;
        Some(jobs)
    });
    spawner.as_ref()
}

#[cfg(test)]
mod tests {
    use std::future::Future as _;
    use std::os::unix::process::CommandExt as _;
    use std::task::Poll;
    use std::time::{Duration, Instant};

    use super::*;

    /// A launch cancelled after the spawner has sent its child, but before the launch took
    /// it, leaves no process.
    #[tokio::test]
    async fn a_child_the_launch_never_took_is_killed() {
        let dir = std::env::temp_dir().join(format!("smgr-spawner-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pid_file = dir.join("pid");
        let _ = std::fs::remove_file(&pid_file);
        let mut command = std::process::Command::new("sh");
        command.arg("-c").arg(format!("echo $$ > {}; exec sleep 60", pid_file.display()));
        command.process_group(0);
        let mut spawning = Box::pin(spawn(Command::from(command)));
        // One poll sends the job; the answer cannot be there yet.
        let first = std::future::poll_fn(|cx| Poll::Ready(spawning.as_mut().poll(cx))).await;
        assert!(first.is_pending(), "the spawn answered before the child could start");
        let start = Instant::now();
        let pid = loop {
            if let Some(pid) = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|text| text.trim().parse::<u32>().ok())
            {
                break pid;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "the child did not start");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        // The spawner sends the child as soon as it runs: let it, then drop the launch.
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(spawning);
        let start = Instant::now();
        while !pool_core::testkit::has_ended(pid) {
            assert!(start.elapsed() < Duration::from_secs(10), "the child {pid} still runs");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
