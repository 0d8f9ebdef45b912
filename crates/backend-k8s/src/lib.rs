//! The Kubernetes backend of Serverless Managers.
//!
//! An instance of this backend is a Pod on any Kubernetes cluster, driven through kube-rs, that
//! serves HTTP on its port, reached by pod IP in-cluster or through a native port-forward. Pods
//! carry the pool's owner id as a label and run with a restricted security context.
//!
//! It is a layer-2 crate: it builds on `pool-core` and never on another backend.
//!
//! # Status
//!
//! The backend has not landed yet, so this crate exports nothing today.
