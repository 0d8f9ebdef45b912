//! The Serverless Managers gateway: the library behind the `smgr` binary.
//!
//! `smgr` puts warm pools of functions behind HTTP: an operator writes a config file naming the
//! functions and their backends (OS processes or Docker containers), runs `smgr serve`, and
//! every request to `/fn/{name}/...` is forwarded to a warm instance, with admin routes,
//! Prometheus metrics and a graceful shutdown. This library holds the dispatch, the config and
//! the HTTP server so that they can be embedded and tested without the binary.
//!
//! It is the top layer of the workspace and the only crate that composes every other one.
//!
//! # Embedding
//!
//! [`Gateway::builder`] takes functions ([`FunctionSetup`]: a name, pool limits and a
//! process or Docker spec, or [`GatewayBuilder::custom_function`]: any
//! [`pool_core::Backend`] of the program's own with its spec), limits and an admin token;
//! [`GatewayBuilder::start`] reaps what a dead predecessor left and starts the pools;
//! [`Gateway::serve`] serves HTTP on a listener until a shutdown future completes, then
//! drains. [`config`] reads `smgr`'s config files. `tests/library.rs` embeds it with a
//! backend of its own.
//!
//! # Feature flags
//!
//! None.

mod any;
pub mod config;
pub mod demo;
mod fast_path;
mod gateway;

pub use gateway::{
    Body, BoxError, FunctionSetup, Gateway, GatewayBuilder, GatewayError, ServeReport,
};
