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
    reply: oneshot::Sender<io::Result<Child>>,
}

/// Spawns `command` from the spawner thread, registered with the current runtime.
pub(crate) async fn spawn(command: Command) -> io::Result<Child> {
    let (reply, answer) = oneshot::channel();
    let job = Job { command, runtime: Handle::current(), reply };
    let spawner =
        spawner().ok_or_else(|| io::Error::other("the spawner thread could not start"))?;
    spawner.send(job).map_err(|_| io::Error::other("the spawner thread is gone"))?;
    answer.await.map_err(|_| io::Error::other("the spawner thread dropped the spawn"))?
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
                        job.command.spawn()
                    };
                    if let Err(Ok(child)) = job.reply.send(spawned) {
                        // The launch was cancelled while its child started: stop the child
                        // rather than leave it running unrecorded.
                        if let Some(pid) = child.id() {
                            let _ = sys::signal_group(pid, libc::SIGKILL);
                        }
                    }
                }
            })
            .ok()?;
        Some(jobs)
    });
    spawner.as_ref()
}
