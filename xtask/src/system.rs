//! Finding and installing the programs the tasks run, one way for all of them.

use std::path::PathBuf;
use std::process::{Command, Stdio};

/// `program` on `PATH`, or in the sbin and bin directories, where Debian puts daemons such as
/// nginx and dockerd.
pub(crate) fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Runs `apt-get args`, non-interactively, showing the command.
pub(crate) fn apt_get(args: &[&str]) -> Result<(), String> {
    let shown = format!("apt-get {}", args.join(" "));
    println!("$ DEBIAN_FRONTEND=noninteractive {shown}");
    let status = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .status()
        .map_err(|error| format!("could not run `{shown}`: {error}"))?;
    if status.success() { Ok(()) } else { Err(format!("`{shown}` exited with {status}")) }
}
