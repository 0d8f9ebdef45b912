//! The Docker backend of Serverless Managers.
//!
//! An instance of this backend is a container on a Docker Engine, driven through bollard, that
//! serves HTTP on its port published to 127.0.0.1. Containers carry the pool's owner id as a
//! label so that a restarted host reaps what a killed one left behind, and they start with all
//! capabilities dropped, no new privileges and memory, CPU and pids limits.
//!
//! It is a layer-2 crate: it builds on `pool-core` and never on another backend.
//!
//! # Status
//!
//! The backend has not landed yet, so this crate exports nothing today.
