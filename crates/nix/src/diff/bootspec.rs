//! `boot.json`, the bootspec document (version 1, RFC 0125) that boot
//! loaders such as systemd-boot and Limine read to make a boot entry.
//!
//! The document names the kernel, initrd, kernel parameters and init
//! that the boot loader starts, so it is compared field by field, and
//! checked against the toplevel's own `kernel`, `initrd`,
//! `kernel-params`, `init` and `specialisation/` entries. A container
//! has no `boot.json`, so its absence is no error.

use std::collections::{BTreeMap, BTreeSet};

use countersign_core::StorePath;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::reduce::reduce_store_paths;
use super::system::{Node, SystemFiles};
use crate::error::Result;
use crate::store_read::{Resolved, resolve};

/// The key of the bootspec version 1 object.
pub const BOOTSPEC_V1: &str = "org.nixos.bootspec.v1";
/// The key of the object that maps each specialisation's name to its
/// own bootspec document.
pub const SPECIALISATION_V1: &str = "org.nixos.specialisation.v1";

/// The string fields of a bootspec version 1 object that are compared.
const FIELDS: &[&str] = &[
    "init",
    "initrd",
    "initrdSecrets",
    "kernel",
    "label",
    "system",
    "toplevel",
];

/// The changes of `boot.json` between two systems.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootspecDiff {
    pub old_present: bool,
    pub new_present: bool,
    /// Fields whose value differs once store paths are reduced to
    /// package names: the string fields by their name, `kernelParams`
    /// joined by spaces, and `specialisation <name>` with the child's
    /// toplevel for each specialisation listed.
    pub changes: Vec<BootspecChange>,
    /// Disagreements between the new system's `boot.json` and its own
    /// files, or the reason it cannot be read as bootspec version 1.
    pub mismatches: Vec<String>,
}

/// One bootspec field that differs; `None` where it is absent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootspecChange {
    pub field: String,
    pub old: Option<String>,
    pub new: Option<String>,
}

/// The parts of one `boot.json` that are compared, with raw store paths.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Bootspec {
    pub fields: BTreeMap<String, String>,
    pub kernel_params: Vec<String>,
    /// Each specialisation's name and the `toplevel` of its document.
    pub specialisations: BTreeMap<String, Option<String>>,
}

impl Bootspec {
    /// Parses a bootspec document. Returns why it is not bootspec
    /// version 1 when it is not.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let document: Value = serde_json::from_str(text).map_err(|error| {
            format!("boot.json is not valid JSON: {error}")
        })?;
        let Some(v1) = document.get(BOOTSPEC_V1).and_then(Value::as_object)
        else {
            return Err(format!("boot.json has no {BOOTSPEC_V1} object"));
        };
        let mut spec = Self::default();
        for field in FIELDS {
            match v1.get(*field) {
                None | Some(Value::Null) => {}
                Some(Value::String(value)) => {
                    spec.fields.insert((*field).to_owned(), value.clone());
                }
                Some(_) => {
                    return Err(format!(
                        "boot.json field {field} is not a string"
                    ));
                }
            }
        }
        if let Some(params) = v1.get("kernelParams") {
            let params = params.as_array().ok_or_else(|| {
                "boot.json field kernelParams is not a list".to_owned()
            })?;
            for param in params {
                let param = param.as_str().ok_or_else(|| {
                    "boot.json field kernelParams has a value that is not a \
                     string"
                        .to_owned()
                })?;
                spec.kernel_params.push(param.to_owned());
            }
        }
        if let Some(children) =
            document.get(SPECIALISATION_V1).and_then(Value::as_object)
        {
            for (name, child) in children {
                let toplevel = child
                    .get(BOOTSPEC_V1)
                    .and_then(|v1| v1.get("toplevel"))
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                spec.specialisations.insert(name.clone(), toplevel);
            }
        }
        Ok(spec)
    }

    /// Returns the compared values, store paths reduced.
    fn values(&self) -> BTreeMap<String, String> {
        let mut values: BTreeMap<String, String> = self
            .fields
            .iter()
            .map(|(field, value)| (field.clone(), reduce_store_paths(value)))
            .collect();
        if !self.kernel_params.is_empty() {
            values.insert(
                "kernelParams".to_owned(),
                reduce_store_paths(&self.kernel_params.join(" ")),
            );
        }
        for (name, toplevel) in &self.specialisations {
            values.insert(
                format!("specialisation {name}"),
                toplevel.as_deref().map_or_else(
                    || "(no toplevel)".to_owned(),
                    reduce_store_paths,
                ),
            );
        }
        values
    }
}

/// Reads the `boot.json` of a system: `None` when there is none, the
/// reason when it is not bootspec version 1.
pub(super) fn read(
    files: &SystemFiles,
) -> Result<Option<std::result::Result<Bootspec, String>>> {
    let Some(node) = files.toplevel.get("boot.json") else {
        return Ok(None);
    };
    Ok(Some(match files.toplevel_text("boot.json")? {
        Some(text) => Bootspec::parse(&text),
        None => Err(format!(
            "boot.json is not a readable text file ({})",
            node_kind(node)
        )),
    }))
}

fn node_kind(node: &Node) -> String {
    match node {
        Node::File { size, .. } => format!("{size} bytes"),
        Node::OutsideLink { target } => {
            format!("a link to {target} outside the Nix store, not followed")
        }
        Node::StoreLink { target } => format!("a link to {target}"),
        _ => "not a file".to_owned(),
    }
}

/// Compares the `boot.json` of two systems, and checks the new one
/// against the new system's files. Returns `None` when neither system
/// has one.
pub(super) fn bootspec_diff(
    old: &SystemFiles,
    new: &SystemFiles,
    new_system: &StorePath,
) -> Result<Option<BootspecDiff>> {
    let before = read(old)?;
    let after = read(new)?;
    if before.is_none() && after.is_none() {
        return Ok(None);
    }
    let values =
        |spec: &Option<std::result::Result<Bootspec, String>>| match spec {
            Some(Ok(spec)) => spec.values(),
            _ => BTreeMap::new(),
        };
    let (old_values, new_values) = (values(&before), values(&after));
    let fields: BTreeSet<&String> =
        old_values.keys().chain(new_values.keys()).collect();
    let changes = fields
        .into_iter()
        .filter(|field| old_values.get(*field) != new_values.get(*field))
        .map(|field| BootspecChange {
            field: field.clone(),
            old: old_values.get(field).cloned(),
            new: new_values.get(field).cloned(),
        })
        .collect();
    let mismatches = match &after {
        Some(spec) => mismatches(spec, new, new_system)?,
        None => Vec::new(),
    };
    Ok(Some(BootspecDiff {
        old_present: before.is_some(),
        new_present: after.is_some(),
        changes,
        mismatches,
    }))
}

/// Lists where a system's `boot.json` disagrees with its own files:
/// the `kernel` and `initrd` links, `kernel-params`, `system`, the
/// toplevel itself and its `init`, and the specialisations.
pub(super) fn mismatches(
    spec: &std::result::Result<Bootspec, String>,
    files: &SystemFiles,
    system: &StorePath,
) -> Result<Vec<String>> {
    let spec = match spec {
        Ok(spec) => spec,
        Err(reason) => return Ok(vec![reason.clone()]),
    };
    let mut found = Vec::new();

    for (field, entry) in [("kernel", "kernel"), ("initrd", "initrd")] {
        let link = match files.toplevel.get(entry) {
            Some(Node::StoreLink { target }) => Some(target.clone()),
            _ => None,
        };
        let named = match spec.fields.get(field) {
            Some(path) => Some(resolved_target(path)?),
            None => None,
        };
        if link != named {
            found.push(format!(
                "{field} in boot.json is {} but the {entry} link is {}",
                show_path(named.as_deref()),
                show_path(link.as_deref())
            ));
        }
    }

    let params_file = files.toplevel_text("kernel-params")?;
    if let Some(text) = &params_file {
        let file: Vec<&str> = text.split_whitespace().collect();
        if file != spec.kernel_params {
            found.push(format!(
                "kernelParams in boot.json are `{}` but kernel-params has \
                 `{}`",
                spec.kernel_params.join(" "),
                file.join(" ")
            ));
        }
    }

    let expected_init = format!("{system}/init");
    let checks = [
        ("toplevel", Some(system.to_string())),
        ("init", Some(expected_init)),
        (
            "system",
            files.toplevel_text("system")?.map(|t| t.trim().to_owned()),
        ),
    ];
    for (field, expected) in checks {
        let (Some(expected), Some(value)) = (expected, spec.fields.get(field))
        else {
            continue;
        };
        if *value != expected {
            found.push(format!(
                "{field} in boot.json is {} but the system has {}",
                reduce_store_paths(value),
                reduce_store_paths(&expected)
            ));
        }
    }

    let listed: BTreeSet<&String> = spec.specialisations.keys().collect();
    let present: BTreeSet<&String> = files.specialisations.keys().collect();
    for name in listed.symmetric_difference(&present) {
        let (there, missing) = if listed.contains(name) {
            ("boot.json", "specialisation/")
        } else {
            ("specialisation/", "boot.json")
        };
        found.push(format!(
            "specialisation {name} is in {there} but not in {missing}"
        ));
    }
    for name in listed.intersection(&present) {
        let link = match files.specialisations.get(*name) {
            Some(Node::StoreLink { target }) => Some(target.as_str()),
            _ => None,
        };
        let named = spec.specialisations.get(*name).cloned().flatten();
        if link != named.as_deref() {
            found.push(format!(
                "specialisation {name} in boot.json boots {} but \
                 specialisation/{name} is {}",
                show_path(named.as_deref()),
                show_path(link)
            ));
        }
    }
    Ok(found)
}

/// Resolves a store path named in `boot.json` the way the toplevel's
/// links are resolved, so that both compare equal when they lead to the
/// same file. A path outside the store is returned as it is, unopened.
fn resolved_target(path: &str) -> Result<String> {
    if StorePath::parse_prefix(path).is_err() {
        return Ok(path.to_owned());
    }
    Ok(match resolve(std::path::Path::new(path))? {
        Resolved::File { path, .. } | Resolved::Directory { path } => {
            path.to_string_lossy().into_owned()
        }
        _ => path.to_owned(),
    })
}

fn show_path(path: Option<&str>) -> String {
    path.map_or_else(|| "(none)".to_owned(), reduce_store_paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCUMENT: &str = r#"{
  "org.nixos.bootspec.v1": {
    "init": "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-nixos-system-a-25.05/init",
    "initrd": "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-initrd-linux-6.6.63/initrd",
    "kernel": "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-linux-6.6.63/bzImage",
    "kernelParams": ["console=ttyS0", "loglevel=4"],
    "label": "NixOS Warbler 25.05 (Linux 6.6.63)",
    "system": "x86_64-linux",
    "toplevel": "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-nixos-system-a-25.05"
  },
  "org.nixos.specialisation.v1": {
    "rescue": {
      "org.nixos.bootspec.v1": {
        "toplevel": "/nix/store/zyxwvsrqpnmlkjihgfdcba9876543210-nixos-system-a-25.05"
      }
    }
  }
}"#;

    #[test]
    fn version_1_fields_are_read() {
        let spec = Bootspec::parse(DOCUMENT).unwrap();
        assert_eq!(spec.fields["system"], "x86_64-linux");
        assert_eq!(spec.kernel_params, ["console=ttyS0", "loglevel=4"]);
        assert!(!spec.fields.contains_key("initrdSecrets"));
        let rescue = spec.specialisations["rescue"].as_deref().unwrap();
        assert!(rescue.ends_with("-nixos-system-a-25.05"), "{rescue}");
        let values = spec.values();
        assert_eq!(values["kernel"], "/nix/store/…-linux/bzImage");
        assert_eq!(values["kernelParams"], "console=ttyS0 loglevel=4");
    }

    #[test]
    fn invalid_documents_give_a_reason() {
        let not_json = Bootspec::parse("{").unwrap_err();
        assert!(not_json.contains("not valid JSON"), "{not_json}");
        let no_v1 = Bootspec::parse(r#"{"v1": {}}"#).unwrap_err();
        assert!(no_v1.contains(BOOTSPEC_V1), "{no_v1}");
        let bad_params = Bootspec::parse(
            r#"{"org.nixos.bootspec.v1": {"kernelParams": "quiet"}}"#,
        )
        .unwrap_err();
        assert!(bad_params.contains("kernelParams"), "{bad_params}");
        let bad_field =
            Bootspec::parse(r#"{"org.nixos.bootspec.v1": {"init": 1}}"#)
                .unwrap_err();
        assert!(bad_field.contains("init"), "{bad_field}");
    }
}
