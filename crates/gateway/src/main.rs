//! `smgr`, the Serverless Managers gateway.
//!
//! Run `smgr --help` for its usage.

use clap::Parser;

/// The command line of `smgr`.
#[derive(Debug, Parser)]
#[command(
    name = "smgr",
    version,
    about = "Serve functions from warm pools over HTTP",
    long_about = "smgr keeps warm pools of function instances (worker threads, child \
                  processes, Docker containers, Kubernetes pods) and serves them over HTTP.",
    after_help = "This build has no commands yet: `smgr serve` arrives with the gateway.",
    // With no arguments, print the help on stderr and exit 2 instead of doing nothing.
    arg_required_else_help = true
)]
struct Cli {}

fn main() {
    // This build has no commands: parsing answers --help and --version and rejects anything
    // else, exiting with clap's status codes.
    let Cli {} = Cli::parse();
}
