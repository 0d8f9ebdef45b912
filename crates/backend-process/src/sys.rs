//! The few system calls std does not offer: signals to process groups, and what the child does
//! between fork and exec. This is the crate's only unsafe code.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;

use crate::spec::Limits;

/// The fd a socket-activated child finds its listener on (`SD_LISTEN_FDS_START`).
pub(crate) const LISTEN_FD: i32 = 3;

/// Signals a process group: `SIGTERM` to ask, `SIGKILL` to force. `Ok(false)` when the group
/// has no process left.
pub(crate) fn signal_group(group: u32, signal: i32) -> io::Result<bool> {
    // A negative pid addresses the group.
    kill(group, signal, true)
}

/// Signals one process. `Ok(false)` when it does not exist.
pub(crate) fn signal_process(pid: u32, signal: i32) -> io::Result<bool> {
    kill(pid, signal, false)
}

fn kill(pid: u32, signal: i32, group: bool) -> io::Result<bool> {
    let pid = libc::pid_t::try_from(pid)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pid out of range"))?;
    if pid <= 1 {
        // kill(0), kill(-1) and their group forms would signal our own group or every process.
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "refusing to signal pid 0 or 1"));
    }
    let target = if group { -pid } else { pid };
    // SAFETY: kill has no memory effects.
    if unsafe { libc::kill(target, signal) } == 0 {
        return Ok(true);
    }
    let error = io::Error::last_os_error();
    match error.raw_os_error() {
        Some(libc::ESRCH) => Ok(false),
        _ => Err(error),
    }
}

/// Sets up what the child does after fork, before exec: die with its host (Linux), apply the
/// rlimits, and put the listener on fd 3 for socket activation.
pub(crate) fn prepare_child(
    command: &mut std::process::Command,
    limits: &Limits,
    listener: Option<&OwnedFd>,
) {
    let host = std::process::id();
    let listener = listener.map(AsRawFd::as_raw_fd);
    let rlimits: Vec<(libc::__rlimit_resource_t, u64)> = [
        (libc::RLIMIT_AS, limits.memory_bytes),
        (libc::RLIMIT_CPU, limits.cpu_seconds),
        (libc::RLIMIT_NOFILE, limits.open_files),
        (libc::RLIMIT_NPROC, limits.processes),
    ]
    .into_iter()
    .filter_map(|(resource, value)| value.map(|value| (resource, value)))
    .collect();
    // SAFETY: the closure runs in the forked child, where only async-signal-safe calls are
    // allowed. It calls prctl, getppid, setrlimit, dup2 and fcntl, all async-signal-safe, and
    // allocates nothing: `rlimits` was built before the fork and is only read.
    unsafe {
        command.pre_exec(move || {
            #[cfg(target_os = "linux")]
            {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                // The host may have died between fork and prctl: then nobody would send it.
                if libc::getppid() as u32 != host {
                    return Err(io::Error::other("the host exited while the child started"));
                }
            }
            for &(resource, value) in &rlimits {
                let limit = libc::rlimit { rlim_cur: value, rlim_max: value };
                if libc::setrlimit(resource, &limit) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            if let Some(fd) = listener {
                if fd == LISTEN_FD {
                    // Already in place: only let it survive exec.
                    let flags = libc::fcntl(fd, libc::F_GETFD);
                    if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                } else if libc::dup2(fd, LISTEN_FD) < 0 {
                    // dup2 leaves the new fd without FD_CLOEXEC.
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}
