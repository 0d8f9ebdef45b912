//! The child-process backend of Serverless Managers.
//!
//! An instance of this backend is an OS child process, written in any language, that serves HTTP
//! on the port given in `$PORT` (the function contract in `docs/function-contract.md`). The
//! backend starts it with a cleared environment in its own process group, knows exactly when it
//! is ready, terminates it gracefully and then by force, and records every child in a state
//! directory so that orphans left by a crashed host are reaped.
//!
//! It is a layer-2 crate: it builds on `pool-core` and never on another backend.
//!
//! # Status
//!
//! The backend has not landed yet, so this crate exports nothing today.
