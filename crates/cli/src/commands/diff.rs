//! `countersign diff OLD NEW`: the package and system diff of two built
//! systems, the same code the server runs for proposals.

use std::path::Path;

use anyhow::{Context, Result};
use countersign_core::StorePath;
use countersign_nix::Nix;
use countersign_nix::diff::{DiffDocument, render_text};

pub fn run(old: &Path, new: &Path, json_output: bool) -> Result<()> {
    let old = resolve(old)?;
    let new = resolve(new)?;
    let document = DiffDocument::of_systems(&Nix::new(), &old, &new)?;
    if json_output {
        crate::terminal::print_json(&document)?;
    } else {
        print!("{}", render_text(&document));
    }
    Ok(())
}

/// Accepts a store path or a link to one, such as /run/current-system or
/// a `result` link.
fn resolve(path: &Path) -> Result<StorePath> {
    let resolved = std::fs::canonicalize(path)
        .with_context(|| format!("{} does not exist", path.display()))?;
    let text = resolved.to_str().with_context(|| {
        format!("{} is not valid UTF-8", resolved.display())
    })?;
    let (store_path, rest) =
        StorePath::parse_prefix(text).with_context(|| {
            format!("{} is not in the Nix store", path.display())
        })?;
    if !rest.is_empty() {
        anyhow::bail!(
            "{} is inside {store_path}; pass the system's top folder",
            path.display()
        );
    }
    Ok(store_path)
}
