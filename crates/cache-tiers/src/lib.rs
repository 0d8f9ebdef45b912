//! A tiered cache for Serverless Managers.
//!
//! This crate will keep results close at hand in three tiers: L1 in memory, L2 on local disk and
//! L3 streaming for large values, with promotion and demotion between tiers, TTLs and bounded
//! size. The gateway and user code share it to avoid recomputing function results.
//!
//! It is a layer-0 crate: it depends on no other crate of the workspace.
//!
//! # Status
//!
//! The cache has not landed yet, so this crate exports nothing today.
