//! The Serverless Managers gateway: the library behind the `smgr` binary.
//!
//! `smgr` puts warm pools of functions behind HTTP: an operator writes a config file naming the
//! functions and their backends (worker, process, Docker, Kubernetes), runs `smgr serve`, and
//! every request to `/fn/{name}/...` is forwarded to a warm instance, with admin routes,
//! Prometheus metrics and a graceful shutdown. This library holds the dispatch, the config and
//! the HTTP server so that they can be embedded and tested without the binary.
//!
//! It is the top layer of the workspace and the only crate that composes every other one.
//!
//! # Status
//!
//! The binary parses its command line (`smgr --help`, `smgr --version`); the `serve` command and
//! everything it needs have not landed yet, so this library exports nothing today.
