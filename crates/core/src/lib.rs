//! The trust rules of countersign, free of I/O: what a statement says,
//! what a policy demands, whether a set of signatures meets it, and how
//! the audit chain links its entries.
//!
//! Both the network-facing server and the privileged activator use this
//! crate, so the activator's decision never depends on the server's code
//! beyond these pure functions.

pub mod store_path;

pub use store_path::{StorePath, StorePathError};
