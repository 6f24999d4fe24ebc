//! The `countersign` command's library: the API client, signing with
//! ssh-keygen, and the subcommands. The binary in `main.rs` only parses
//! arguments; tests drive the same code through the binary and through
//! the demo's [`commands::demo::Environment`].

pub mod client;
pub mod commands;
pub mod sign;
pub mod terminal;
