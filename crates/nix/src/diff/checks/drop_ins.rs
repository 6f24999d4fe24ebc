//! The drop-in folders that systemd reads for a unit.
//!
//! For a unit `<name>`, systemd reads these folders, most specific
//! first (`unit_file_find_dropin_paths` in systemd's
//! `src/shared/dropin.c`, and the "drop-in" part of systemd.unit(5)):
//!
//! 1. `<name>.d/`;
//! 2. for an instance such as `foo-bar@baz.service`, the folders of its
//!    template `foo-bar@.service`, found by these same steps;
//! 3. the folders of the name cut after its last dash but one, found by
//!    these same steps: `foo-bar-baz.service` continues with
//!    `foo-bar-.service`, which continues with `foo-.service`. Only the
//!    part before `@` is cut, and an instance keeps its instance, so
//!    `foo-bar@baz.service` continues with `foo-@baz.service` and the
//!    template `foo-bar@.service` with `foo-.service`;
//! 4. last, the folder of the unit type, such as `service.d/`.
//!
//! The `.conf` files of all these folders are applied together, sorted
//! by file name. A file name found in several folders is taken from the
//! most specific folder only, because systemd's `conf-files.c` skips a
//! name already found in an earlier folder.

/// Unit types of systemd. A folder named after one (`service.d/`)
/// applies to every unit of that type.
const UNIT_TYPES: &[&str] = &[
    "service",
    "socket",
    "device",
    "mount",
    "automount",
    "swap",
    "target",
    "path",
    "timer",
    "slice",
    "scope",
];

/// A unit name split into its parts: `foo@bar.service` has the prefix
/// `foo`, the instance `bar` and the type `service`. A template such as
/// `foo@.service` has an empty instance.
struct UnitName<'a> {
    prefix: &'a str,
    instance: Option<&'a str>,
    unit_type: &'a str,
}

impl<'a> UnitName<'a> {
    /// Splits `name`; `None` when it does not end in a known unit type
    /// or has an empty prefix.
    fn parse(name: &'a str) -> Option<Self> {
        let (stem, unit_type) = name.rsplit_once('.')?;
        if !UNIT_TYPES.contains(&unit_type) {
            return None;
        }
        let (prefix, instance) = match stem.split_once('@') {
            Some((prefix, instance)) => (prefix, Some(instance)),
            None => (stem, None),
        };
        if prefix.is_empty() {
            return None;
        }
        Some(Self {
            prefix,
            instance,
            unit_type,
        })
    }

    /// Returns the instance of an instantiated unit, and `None` for a
    /// template or a plain unit.
    fn instance(&self) -> Option<&'a str> {
        self.instance.filter(|instance| !instance.is_empty())
    }
}

/// Cuts a name prefix after its last dash but one, as systemd does for
/// the dash-prefix folders: `foo-bar-baz` becomes `foo-bar-`, and
/// `foo-bar-` becomes `foo-`. A prefix whose only dash is its first
/// character has no shorter prefix.
fn shorter_prefix(prefix: &str) -> Option<&str> {
    let body = prefix.strip_suffix('-').unwrap_or(prefix);
    let dash = body.rfind('-')?;
    (dash > 0).then(|| &body[..=dash])
}

/// Lists the drop-in folders systemd reads for the unit `name`, most
/// specific first, each as `<folder name>.d` relative to the unit
/// directory. A name that is not a unit name gets its own folder only.
pub(super) fn drop_in_folders(name: &str) -> Vec<String> {
    let mut folders = Vec::new();
    add_folders(name, &mut folders);
    if let Some(unit) = UnitName::parse(name) {
        folders.push(format!("{}.d", unit.unit_type));
    }
    let mut seen = std::collections::BTreeSet::new();
    folders.retain(|folder| seen.insert(folder.clone()));
    folders
}

fn add_folders(name: &str, folders: &mut Vec<String>) {
    folders.push(format!("{name}.d"));
    let Some(unit) = UnitName::parse(name) else {
        return;
    };
    if unit.instance().is_some() {
        let template = format!("{}@.{}", unit.prefix, unit.unit_type);
        add_folders(&template, folders);
    }
    let Some(shorter) = shorter_prefix(unit.prefix) else {
        return;
    };
    let next = match unit.instance() {
        Some(instance) => format!("{shorter}@{instance}.{}", unit.unit_type),
        None => format!("{shorter}.{}", unit.unit_type),
    };
    add_folders(&next, folders);
}

/// Returns the kind of the shared drop-in folder `<name>.d/`, which
/// applies to many units rather than to the unit `name` alone. `None`
/// for the folder of a single unit.
pub(super) fn shared_folder_kind(name: &str) -> Option<&'static str> {
    if UNIT_TYPES.contains(&name) {
        return Some("unit type");
    }
    let unit = UnitName::parse(name)?;
    if unit.instance == Some("") {
        Some("template")
    } else if unit.prefix.ends_with('-') {
        Some("name prefix")
    } else {
        None
    }
}

/// Tells whether `name` is a unit name with a known type, such as
/// `sshd.service` or `getty@.service`.
pub(super) fn is_unit_name(name: &str) -> bool {
    UnitName::parse(name).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_of_plain_name() {
        assert_eq!(
            drop_in_folders("sshd.service"),
            ["sshd.service.d", "service.d"]
        );
    }

    #[test]
    fn folders_of_dashed_name() {
        assert_eq!(
            drop_in_folders("foo-bar-baz.service"),
            [
                "foo-bar-baz.service.d",
                "foo-bar-.service.d",
                "foo-.service.d",
                "service.d",
            ]
        );
        // A leading dash is not a prefix, and a doubled dash is cut once.
        assert_eq!(
            drop_in_folders("-foo.socket"),
            ["-foo.socket.d", "socket.d"]
        );
        assert_eq!(
            drop_in_folders("a--b.timer"),
            ["a--b.timer.d", "a--.timer.d", "a-.timer.d", "timer.d"]
        );
    }

    #[test]
    fn folders_of_template_instance() {
        assert_eq!(
            drop_in_folders("foo-bar@baz.service"),
            [
                "foo-bar@baz.service.d",
                "foo-bar@.service.d",
                "foo-.service.d",
                "foo-@baz.service.d",
                "foo-@.service.d",
                "service.d",
            ]
        );
        assert_eq!(
            drop_in_folders("getty@tty1.service"),
            ["getty@tty1.service.d", "getty@.service.d", "service.d"]
        );
    }

    #[test]
    fn folders_of_template() {
        assert_eq!(
            drop_in_folders("foo-bar@.service"),
            ["foo-bar@.service.d", "foo-.service.d", "service.d"]
        );
    }

    #[test]
    fn type_level_folder_is_shared() {
        assert_eq!(shared_folder_kind("service"), Some("unit type"));
        assert_eq!(shared_folder_kind("timer"), Some("unit type"));
        assert_eq!(shared_folder_kind("foo-.service"), Some("name prefix"));
        assert_eq!(shared_folder_kind("foo@.service"), Some("template"));
        assert_eq!(
            shared_folder_kind("foo-@bar.service"),
            Some("name prefix")
        );
        assert_eq!(shared_folder_kind("foo@bar.service"), None);
        assert_eq!(shared_folder_kind("foo-bar.service"), None);
        assert_eq!(shared_folder_kind("notes"), None);
        // A type-level folder is no unit, so it has no folders of its
        // own beyond its name.
        assert_eq!(drop_in_folders("service"), ["service.d"]);
    }

    #[test]
    fn names_without_known_type_are_not_units() {
        assert!(is_unit_name("sshd.service"));
        assert!(is_unit_name("getty@.service"));
        assert!(!is_unit_name("service"));
        assert!(!is_unit_name("foo.conf"));
        assert!(!is_unit_name("@x.service"));
    }
}
