//! End-to-end checks of the `smgr` command line: the real binary, run as a user would.

use std::process::{Command, Output};

fn smgr(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_smgr")).args(args).output().expect("the smgr binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).expect("smgr prints UTF-8")
}

#[test]
fn version_names_the_binary_and_the_workspace_version() {
    let out = smgr(&["--version"]);
    assert!(out.status.success(), "smgr --version failed: {out:?}");
    assert_eq!(text(&out.stdout), format!("smgr {}\n", env!("CARGO_PKG_VERSION")));
}

#[test]
fn help_prints_usage_and_what_smgr_is_for() {
    let out = smgr(&["--help"]);
    assert!(out.status.success(), "smgr --help failed: {out:?}");
    let help = text(&out.stdout);
    assert!(help.contains("Usage: smgr"), "no usage line in:\n{help}");
    assert!(help.contains("warm pools"), "help does not say what smgr is for:\n{help}");
    assert!(help.contains("--version"), "help does not list --version:\n{help}");
}

#[test]
fn no_arguments_is_a_usage_error() {
    let out = smgr(&[]);
    assert_eq!(out.status.code(), Some(2), "smgr with no arguments: {out:?}");
    assert!(out.stdout.is_empty(), "stdout should be empty: {}", text(&out.stdout));
    assert!(text(&out.stderr).contains("Usage: smgr"), "stderr: {}", text(&out.stderr));
}

#[test]
fn an_unknown_argument_is_named_in_the_error() {
    let out = smgr(&["--frobnicate"]);
    assert_eq!(out.status.code(), Some(2), "smgr --frobnicate: {out:?}");
    let err = text(&out.stderr);
    assert!(err.contains("--frobnicate"), "the error does not name the argument: {err}");
}
