//! Calls to git and Nix for countersign, and the diff document that
//! approvers review.
//!
//! The pipeline steps are plain functions: [`git::fetch_branch`] keeps a
//! bare mirror of the repository, [`fetch_source`] copies one commit into
//! the store, [`build`] builds the host's toplevel and [`diff`] compares
//! it with the running system. The privileged activator links this crate
//! too, to re-evaluate an approved source with [`evaluate_out_path`], so
//! it stays synchronous and small: external programs run through
//! `std::process`, with no async runtime and no network stack.
//!
//! Reading a built system goes through [`store_read`], which follows
//! symbolic links one hop at a time and never leaves `/nix/store`. The
//! package diff reads both closures into a [`closure::ClosurePair`],
//! from the Nix database through [`store_db`] when it can be read, and
//! from `nix path-info` otherwise.

pub mod closure;
pub mod diff;
mod drv_name;
mod error;
mod escape;
pub mod fixture;
mod flake;
pub mod git;
mod nix;
mod process;
pub mod store_db;
pub mod store_read;

pub use drv_name::parse_drv_name;
pub use error::{Error, Result};
pub use escape::{escape_control_chars, escape_json_output};
pub use flake::{
    FetchedSource, build, evaluate_out_path, fetch_source, validate_attribute,
};
pub use nix::{
    Nix, PathInfo, is_valid_path, nar_hash, path_info, validate_nar_hash,
};
