//! The state directory: a record of every running child per owner, so that a later owner of
//! the same pool kills what a dead one left behind.
//!
//! Layout: `<base>/<pool>/<owner>/<instance>` holds `<pid> <start>` — the child's pid, which is
//! also its process group, and its start time, so that a recycled pid is never taken for it.
//! The owner id in the directory name says which process owned the children and lets a later
//! one tell whether it still runs.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use pool_core::{InstanceId, Liveness, OwnerId, Reaped, Scope, process_start};

use crate::sys;

/// The default base directory: `$XDG_RUNTIME_DIR/smgr/process`, else
/// `<temp dir>/smgr-<uid>/process`.
pub fn default_state_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(runtime) if !runtime.is_empty() => PathBuf::from(runtime).join("smgr").join("process"),
        _ => {
            // The uid keeps users apart in a shared temp dir; /proc/self is owned by it.
            let uid = fs::metadata("/proc/self").map(|meta| meta.uid()).unwrap_or(0);
            std::env::temp_dir().join(format!("smgr-{uid}")).join("process")
        }
    }
}

/// This owner's records and the view of the pool's other owners.
#[derive(Debug)]
pub(crate) struct StateDir {
    pool_dir: PathBuf,
    own_dir: PathBuf,
    scope: Scope,
}

impl StateDir {
    pub(crate) fn open(base: &Path, scope: &Scope) -> io::Result<Self> {
        let pool_dir = base.join(scope.pool.as_str());
        let own_dir = pool_dir.join(scope.owner.as_str());
        fs::DirBuilder::new().recursive(true).mode(0o700).create(&own_dir)?;
        Ok(Self { pool_dir, own_dir, scope: scope.clone() })
    }

    pub(crate) fn own_dir(&self) -> &Path {
        &self.own_dir
    }

    /// Records a running child; written to a temporary name and renamed, so a reader never
    /// sees half a record.
    pub(crate) fn record(&self, instance: InstanceId, pid: u32, start: u64) -> io::Result<()> {
        let path = self.own_dir.join(instance.0.to_string());
        let temporary = self.own_dir.join(format!(".{}.tmp", instance.0));
        fs::write(&temporary, format!("{pid} {start}\n"))?;
        fs::rename(&temporary, &path)
    }

    /// Forgets a child that was stopped.
    pub(crate) fn forget(&self, instance: InstanceId) {
        let _ = fs::remove_file(self.own_dir.join(instance.0.to_string()));
    }

    /// Kills what dead owners of this pool left behind: the recorded children with their
    /// process groups, and any process that still carries a dead owner's id in its
    /// environment (a grandchild that left the group).
    pub(crate) fn reap(&self) -> io::Result<Reaped> {
        let mut reaped = Reaped::default();
        let entries = match fs::read_dir(&self.pool_dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(reaped),
            Err(error) => return Err(error),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            let Some(owner) = name.to_str().and_then(|name| name.parse::<OwnerId>().ok()) else {
                continue;
            };
            if owner == self.scope.owner {
                continue;
            }
            if owner.liveness() != Liveness::Dead {
                reaped.skipped_owners += 1;
                continue;
            }
            reaped.owners += 1;
            let dir = entry.path();
            for record in fs::read_dir(&dir)? {
                let path = record?.path();
                let text = fs::read_to_string(&path).unwrap_or_default();
                let mut fields = text.split_whitespace().map(str::parse::<u64>);
                if let (Some(Ok(pid)), Some(Ok(start))) = (fields.next(), fields.next())
                    && let Ok(pid) = u32::try_from(pid)
                    && kill_recorded(pid, start)
                {
                    reaped.instances += 1;
                }
                let _ = fs::remove_file(&path);
            }
            for pid in processes_of(&self.scope.pool, &owner, None) {
                if sys::signal_process(pid, libc::SIGKILL).unwrap_or(false) {
                    reaped.instances += 1;
                }
            }
            let _ = fs::remove_dir(&dir);
        }
        Ok(reaped)
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        // Empty once every child was stopped; a directory with records stays for a reaper.
        let _ = fs::remove_dir(&self.own_dir);
    }
}

/// Kills a recorded child and its process group; whether anything was there to kill.
fn kill_recorded(pid: u32, start: u64) -> bool {
    match process_start(pid) {
        // The child itself still runs: kill its group, and the child should it have left it.
        Some(now) if now == start => {
            let group = sys::signal_group(pid, libc::SIGKILL).unwrap_or(false);
            sys::signal_process(pid, libc::SIGKILL).unwrap_or(false) || group
        }
        // The pid belongs to another process now, which means the child's group emptied
        // first (Linux does not reuse a pid still naming a group): nothing of ours is left.
        Some(_) => false,
        // The child is gone; members of its group may remain.
        None => sys::signal_group(pid, libc::SIGKILL).unwrap_or(false),
    }
}

/// Processes of this host whose environment says they belong to `owner` in `pool` — and to
/// that instance, when one is given. Every child gets `SMGR_POOL`, `SMGR_OWNER` and
/// `SMGR_INSTANCE`, and its own children inherit them unless they clear their environment.
/// Processes of other users, which cannot be read, are not found.
pub fn processes_of(
    pool: &pool_core::PoolName,
    owner: &OwnerId,
    instance: Option<InstanceId>,
) -> Vec<u32> {
    let pool_entry = format!("SMGR_POOL={pool}");
    let owner_entry = format!("SMGR_OWNER={owner}");
    let instance_entry = instance.map(|id| format!("SMGR_INSTANCE={}", id.0));
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else {
            continue;
        };
        // Zombies and processes of other users read as empty or fail.
        let Ok(environment) = fs::read(entry.path().join("environ")) else { continue };
        let mut has_pool = false;
        let mut has_owner = false;
        let mut has_instance = instance_entry.is_none();
        for variable in environment.split(|&byte| byte == 0) {
            has_pool |= variable == pool_entry.as_bytes();
            has_owner |= variable == owner_entry.as_bytes();
            has_instance |=
                instance_entry.as_ref().is_some_and(|entry| variable == entry.as_bytes());
        }
        if has_pool && has_owner && has_instance {
            found.push(pid);
        }
    }
    found
}
