//! NixOS-shaped test systems that build without nixpkgs.
//!
//! `countersign demo` and the tests need real toplevels to fetch, build,
//! diff and switch, on a machine with no network and no nixpkgs. A
//! [`SystemSpec`] describes such a system and [`write_flake`] turns it
//! into a `flake.nix` without inputs whose
//! `nixosConfigurations.<host>.config.system.build.toplevel` is built
//! from `builtins.derivation` calls with `/bin/sh` as the builder.
//!
//! The result follows the layout of a real NixOS toplevel. There is one
//! store path per package (`<name>-<version>`), one per unit
//! (`unit-<name>`) gathered in `system-units`, and one per `/etc` text
//! file (`etc-<path>`). The `etc` tree is made of links, with `.mode`,
//! `.uid` and `.gid` sidecars where NixOS writes them, and `sw` is a
//! `system-path`. The toplevel has the entries `activate`,
//! `bin/switch-to-configuration`, `etc`, `sw`, `kernel`,
//! `kernel-modules`, `initrd`, `kernel-params`, `init`,
//! `init-interface-version`, `nixos-version`, `system` and
//! `specialisation/`.
//!
//! Its `switch-to-configuration` does not activate anything: it appends
//! `<action> <toplevel>` to [`SystemSpec::switch_log`] and exits 0, or 1
//! when [`SystemSpec::fail_switch`] is set.
//!
//! Text of units and `/etc` files may name a package's store path as
//! `@pkg:<name>@`, which becomes a real store reference, as in
//! `ExecStart=@pkg:openssh@/bin/sshd`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, Result};
use crate::process;

/// One package of a test system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    pub name: String,
    /// The version; empty for a generated path without one.
    pub version: String,
    /// Relative paths and contents; files under `bin/` are executable
    /// and linked into `sw/bin`.
    pub files: Vec<(String, String)>,
}

impl Package {
    /// A package with one executable `bin/<name>` that prints its name
    /// and version.
    pub fn with_binary(name: &str, version: &str) -> Self {
        Self {
            name: name.to_owned(),
            version: version.to_owned(),
            files: vec![(
                format!("bin/{name}"),
                format!("#!/bin/sh\necho '{name} {version}'\n"),
            )],
        }
    }
}

impl Package {
    /// The store name: `<name>-<version>`, or the bare name for a
    /// generated path without a version such as `unit-script-x-start`.
    pub fn store_name(&self) -> String {
        if self.version.is_empty() {
            self.name.clone()
        } else {
            format!("{}-{}", self.name, self.version)
        }
    }
}

/// A test system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemSpec {
    /// Host name; also the attribute under `nixosConfigurations`.
    pub host: String,
    /// NixOS label, written to `nixos-version` and used in the toplevel
    /// name `nixos-system-<host>-<label>`.
    pub label: String,
    /// Nix system type such as `x86_64-linux`.
    pub system: String,
    pub packages: Vec<Package>,
    /// systemd units: file name and text. A unit whose text contains
    /// `WantedBy=multi-user.target` is also linked from
    /// `multi-user.target.wants/`.
    pub units: Vec<(String, String)>,
    /// `/etc` text files: path relative to `/etc`, and text.
    pub etc: Vec<(String, String)>,
    /// `/etc` entries that are links to a path outside the store, as
    /// NixOS writes for `mode = "direct-symlink"`: path relative to
    /// `/etc`, and the link target.
    pub etc_links: Vec<(String, String)>,
    /// Content of `/etc/countersign/policy.toml`, if any.
    pub policy_toml: Option<String>,
    pub kernel_version: String,
    pub kernel_params: Vec<String>,
    /// Absolute path that `switch-to-configuration` appends to. It is
    /// part of the flake text, so it must be the same wherever the
    /// system is built and switched.
    pub switch_log: PathBuf,
    /// Makes `switch-to-configuration` exit 1 after logging.
    pub fail_switch: bool,
    /// Makes the toplevel's builder print an error and exit 1.
    pub fail_build: bool,
    /// Seconds the toplevel's builder sleeps first, so that a test can act
    /// while a build runs.
    pub build_delay_secs: u32,
}

impl SystemSpec {
    /// Describes a small server: hello, openssh and coreutils, an SSH
    /// daemon unit and a hello unit, and the usual `/etc` files.
    pub fn demo(host: &str, switch_log: &Path) -> Self {
        Self {
            host: host.to_owned(),
            label: "25.05.20250601.c0ffee0".to_owned(),
            system: default_system(),
            packages: vec![
                Package::with_binary("hello", "2.12.1"),
                Package {
                    name: "openssh".to_owned(),
                    version: "9.9p1".to_owned(),
                    files: vec![
                        (
                            "bin/ssh".to_owned(),
                            "#!/bin/sh\necho 'ssh stub'\n".to_owned(),
                        ),
                        (
                            "bin/sshd".to_owned(),
                            "#!/bin/sh\necho 'sshd stub'\n".to_owned(),
                        ),
                    ],
                },
                Package::with_binary("coreutils", "9.5"),
            ],
            units: vec![
                (
                    "sshd.service".to_owned(),
                    "[Unit]\nDescription=SSH Daemon\n\
                     After=network.target\n\n[Service]\n\
                     ExecStart=@pkg:openssh@/bin/sshd -D -f \
                     /etc/ssh/sshd_config\nRestart=always\n\n\
                     [Install]\nWantedBy=multi-user.target\n"
                        .to_owned(),
                ),
                (
                    "hello.service".to_owned(),
                    "[Unit]\nDescription=Greeting\n\n[Service]\n\
                     Type=oneshot\nExecStart=@pkg:hello@/bin/hello\n\
                     DynamicUser=true\n\n[Install]\n\
                     WantedBy=multi-user.target\n"
                        .to_owned(),
                ),
            ],
            etc: vec![
                ("hostname".to_owned(), format!("{host}\n")),
                (
                    "ssh/sshd_config".to_owned(),
                    "PermitRootLogin prohibit-password\n\
                     PasswordAuthentication yes\n\
                     KbdInteractiveAuthentication no\n\
                     AuthorizedKeysFile %h/.ssh/authorized_keys \
                     /etc/ssh/authorized_keys.d/%u\n"
                        .to_owned(),
                ),
                (
                    "sudoers".to_owned(),
                    "root ALL=(ALL:ALL) SETENV: ALL\n\
                     %wheel ALL=(ALL:ALL) SETENV: ALL\n"
                        .to_owned(),
                ),
                (
                    "pam.d/sshd".to_owned(),
                    "auth required pam_unix.so\n\
                     account required pam_unix.so\n"
                        .to_owned(),
                ),
                (
                    "nix/nix.conf".to_owned(),
                    "trusted-users = root\nsandbox = true\n\
                     require-sigs = true\n"
                        .to_owned(),
                ),
            ],
            etc_links: Vec::new(),
            policy_toml: None,
            kernel_version: "6.6.63".to_owned(),
            kernel_params: vec![
                "console=ttyS0".to_owned(),
                "loglevel=4".to_owned(),
            ],
            switch_log: switch_log.to_owned(),
            fail_switch: false,
            fail_build: false,
            build_delay_secs: 0,
        }
    }

    /// Returns the next version of [`SystemSpec::demo`], for showing a
    /// change: see [`SystemSpec::apply_demo_change`].
    pub fn demo_update(&self) -> Self {
        let mut next = self.clone();
        next.apply_demo_change();
        next
    }

    /// Changes the system the way the demo's second commit does: hello
    /// 2.12.2, a new jq package and timer unit, and password login turned
    /// off in `sshd_config`.
    pub fn apply_demo_change(&mut self) {
        self.set_package(Package::with_binary("hello", "2.12.2"));
        self.set_package(Package::with_binary("jq", "1.7.1"));
        self.set_unit(
            "backup.timer",
            "[Unit]\nDescription=Nightly backup\n\n[Timer]\n\
             OnCalendar=daily\n\n[Install]\nWantedBy=timers.target\n",
        );
        if let Some((_, text)) = self
            .etc
            .iter_mut()
            .find(|(path, _)| path == "ssh/sshd_config")
        {
            *text = text.replace(
                "PasswordAuthentication yes",
                "PasswordAuthentication no",
            );
        }
    }

    /// Returns the flake attribute of the toplevel.
    pub fn attribute(&self) -> String {
        format!(
            "nixosConfigurations.{}.config.system.build.toplevel",
            self.host
        )
    }

    /// Adds `package`, or replaces the package of the same name.
    pub fn set_package(&mut self, package: Package) {
        match self.packages.iter_mut().find(|p| p.name == package.name) {
            Some(existing) => *existing = package,
            None => self.packages.push(package),
        }
    }

    pub fn remove_package(&mut self, name: &str) {
        self.packages.retain(|package| package.name != name);
    }

    /// Adds the unit `name`, or replaces its text.
    pub fn set_unit(&mut self, name: &str, text: &str) {
        set_entry(&mut self.units, name, text);
    }

    pub fn remove_unit(&mut self, name: &str) {
        self.units.retain(|(unit, _)| unit != name);
    }

    /// Adds the `/etc` file `path`, or replaces its text.
    pub fn set_etc(&mut self, path: &str, text: &str) {
        set_entry(&mut self.etc, path, text);
    }

    pub fn remove_etc(&mut self, path: &str) {
        self.etc.retain(|(entry, _)| entry != path);
    }

    /// Generates the text of `flake.nix`.
    pub fn to_flake_nix(&self) -> Result<String> {
        FlakeWriter::new(self)?.write()
    }
}

fn set_entry(entries: &mut Vec<(String, String)>, key: &str, text: &str) {
    match entries.iter_mut().find(|(name, _)| name == key) {
        Some((_, existing)) => *existing = text.to_owned(),
        None => entries.push((key.to_owned(), text.to_owned())),
    }
}

/// `<arch>-linux` for the machine this runs on.
fn default_system() -> String {
    format!("{}-linux", std::env::consts::ARCH)
}

/// Writes `dir/flake.nix` for `spec` and returns its path.
pub fn write_flake(dir: &Path, spec: &SystemSpec) -> Result<PathBuf> {
    let text = spec.to_flake_nix()?;
    fs::create_dir_all(dir).map_err(|error| Error::io(dir, error))?;
    let path = dir.join("flake.nix");
    fs::write(&path, text).map_err(|error| Error::io(&path, error))?;
    Ok(path)
}

/// Writes the flake for `spec` into the git work tree `dir` (created,
/// with branch `main`, if needed), commits it and returns the commit id.
pub fn commit_flake(
    dir: &Path,
    spec: &SystemSpec,
    message: &str,
) -> Result<String> {
    if !dir.join(".git").exists() {
        fs::create_dir_all(dir).map_err(|error| Error::io(dir, error))?;
        process::run(
            Command::new("git")
                .args(["init", "--quiet", "--initial-branch=main", "--"])
                .arg(dir),
        )?;
    }
    write_flake(dir, spec)?;
    let git = |args: &[&str]| -> Result<Vec<u8>> {
        process::run(
            Command::new("git")
                .arg("-C")
                .arg(dir)
                .args([
                    "-c",
                    "user.name=countersign test",
                    "-c",
                    "user.email=test@countersign.invalid",
                    "-c",
                    "commit.gpgsign=false",
                ])
                .args(args),
        )
    };
    git(&["add", "--", "flake.nix"])?;
    git(&["commit", "--quiet", "--allow-empty", "-m", message])?;
    let head = git(&["rev-parse", "HEAD"])?;
    Ok(String::from_utf8_lossy(&head).trim().to_owned())
}

/// A Nix string expression built from literal text and interpolations.
#[derive(Default)]
struct NixString(String);

impl NixString {
    fn literal(mut self, text: &str) -> Self {
        for c in text.chars() {
            match c {
                '\\' => self.0.push_str("\\\\"),
                '"' => self.0.push_str("\\\""),
                '$' => self.0.push_str("\\$"),
                '\n' => self.0.push_str("\\n"),
                '\r' => self.0.push_str("\\r"),
                '\t' => self.0.push_str("\\t"),
                c => self.0.push(c),
            }
        }
        self
    }

    fn interpolate(mut self, expression: &str) -> Self {
        self.0.push_str("${");
        self.0.push_str(expression);
        self.0.push('}');
        self
    }

    fn finish(self) -> String {
        format!("\"{}\"", self.0)
    }
}

/// Generates the flake text; one binding per store path.
struct FlakeWriter<'a> {
    spec: &'a SystemSpec,
    bindings: Vec<String>,
}

impl<'a> FlakeWriter<'a> {
    fn new(spec: &'a SystemSpec) -> Result<Self> {
        validate_spec(spec)?;
        Ok(Self {
            spec,
            bindings: Vec::new(),
        })
    }

    /// Adds `binding = mk "<name>" <script> { <attrs> };`.
    fn derivation(
        &mut self,
        binding: &str,
        name: &str,
        script: NixString,
        attrs: &[(String, NixString)],
    ) {
        let mut text = format!(
            "  {binding} = mk {} {} {{",
            NixString::default().literal(name).finish(),
            script.finish()
        );
        for (key, value) in attrs {
            text.push_str(&format!("\n    {key} = {};", value_text(value)));
        }
        text.push_str(" };");
        self.bindings.push(text);
    }

    /// Converts `text` to a Nix string in which `@pkg:<name>@` becomes
    /// the store path of that package.
    fn with_references(&self, text: &str) -> Result<NixString> {
        let mut out = NixString::default();
        let mut rest = text;
        while let Some(start) = rest.find("@pkg:") {
            let after = &rest[start + 5..];
            let Some(end) = after.find('@') else { break };
            let name = &after[..end];
            let index = self
                .spec
                .packages
                .iter()
                .position(|package| package.name == name)
                .ok_or_else(|| {
                    Error::invalid(
                        "package reference",
                        format!("@pkg:{name}@"),
                        "no package of that name in the system",
                    )
                })?;
            out = out
                .literal(&rest[..start])
                .interpolate(&format!("package_{index}"));
            rest = &after[end + 1..];
        }
        Ok(out.literal(rest))
    }

    fn write(mut self) -> Result<String> {
        let spec = self.spec;
        self.packages();
        self.units()?;
        self.etc()?;
        self.system_path();
        self.kernel();
        self.toplevel();

        let mut text = String::new();
        text.push_str(
            "# Generated test system: NixOS-shaped, built with /bin/sh \
             and no nixpkgs.\n{\n  outputs = { self }:\n    let\n",
        );
        text.push_str(&format!(
            "  system = {};\n",
            NixString::default().literal(&spec.system).finish()
        ));
        text.push_str(
            "  mk = name: script: attrs: builtins.derivation ({\n    \
             inherit name system;\n    builder = \"/bin/sh\";\n    \
             args = [ \"-e\" \"-c\" script ];\n    \
             PATH = \"/usr/bin:/bin\";\n  } // attrs);\n",
        );
        for binding in &self.bindings {
            text.push_str(binding);
            text.push('\n');
        }
        text.push_str(&format!(
            "    in {{\n      nixosConfigurations.{}.config.system.build\
             .toplevel = toplevel;\n    }};\n}}\n",
            spec.host
        ));
        Ok(text)
    }

    fn packages(&mut self) {
        for (index, package) in self.spec.packages.iter().enumerate() {
            let mut script = String::from("mkdir -p \"$out\"\n");
            let mut attrs = Vec::new();
            for (file_index, (path, content)) in
                package.files.iter().enumerate()
            {
                if let Some((dir, _)) = path.rsplit_once('/') {
                    script.push_str(&format!("mkdir -p \"$out/{dir}\"\n"));
                }
                script.push_str(&format!(
                    "printf '%s' \"$file{file_index}\" > \"$out/{path}\"\n"
                ));
                if is_executable(path) {
                    script.push_str(&format!("chmod +x \"$out/{path}\"\n"));
                }
                attrs.push((
                    format!("file{file_index}"),
                    NixString::default().literal(content),
                ));
            }
            self.derivation(
                &format!("package_{index}"),
                &package.store_name(),
                NixString::default().literal(&script),
                &attrs,
            );
        }
    }

    fn units(&mut self) -> Result<()> {
        let mut links = NixString::default().literal("mkdir -p \"$out\"\n");
        let mut wants = Vec::new();
        for (index, (name, text)) in self.spec.units.iter().enumerate() {
            let binding = format!("unit_{index}");
            let content = self.with_references(text)?;
            self.derivation(
                &binding,
                &format!("unit-{}", store_safe(name)),
                NixString::default().literal(&format!(
                    "mkdir -p \"$out\"\nprintf '%s' \"$text\" > \"$out/{name}\"\n"
                )),
                &[("text".to_owned(), content)],
            );
            links = links
                .literal("ln -s \"")
                .interpolate(&binding)
                .literal(&format!("/{name}\" \"$out/{name}\"\n"));
            if text.contains("WantedBy=multi-user.target") {
                wants.push(name.clone());
            }
        }
        if !wants.is_empty() {
            links =
                links.literal("mkdir -p \"$out/multi-user.target.wants\"\n");
        }
        for name in wants {
            links = links.literal(&format!(
                "ln -s \"../{name}\" \"$out/multi-user.target.wants/{name}\"\n"
            ));
        }
        self.derivation("system_units", "system-units", links, &[]);
        Ok(())
    }

    fn etc(&mut self) -> Result<()> {
        let spec = self.spec;
        let mut files: Vec<(String, String)> = spec.etc.clone();
        if let Some(policy) = &spec.policy_toml {
            files.push(("countersign/policy.toml".to_owned(), policy.clone()));
        }
        let mut script = NixString::default()
            .literal("mkdir -p \"$out/etc/systemd\"\nln -s \"")
            .interpolate("system_units")
            .literal("\" \"$out/etc/systemd/system\"\n");
        for (index, (path, text)) in files.iter().enumerate() {
            let binding = format!("etc_{index}");
            let content = self.with_references(text)?;
            self.derivation(
                &binding,
                &format!("etc-{}", store_safe(&path.replace('/', "-"))),
                NixString::default()
                    .literal("printf '%s' \"$text\" > \"$out\"\n"),
                &[("text".to_owned(), content)],
            );
            script = script
                .literal(&mkdir_parent(path))
                .literal("ln -s \"")
                .interpolate(&binding)
                .literal(&format!("\" \"$out/etc/{path}\"\n"));
            if let Some(mode) = etc_mode(path) {
                script = script.literal(&sidecars(path, mode));
            }
        }
        for (path, target) in &spec.etc_links {
            script = script
                .literal(&mkdir_parent(path))
                .literal(&format!(
                    "ln -s {} \"$out/etc/{path}\"\n",
                    shell_quote(target)
                ))
                .literal(&sidecars(path, "direct-symlink"));
        }
        self.derivation("etc", "etc", script, &[]);
        Ok(())
    }

    fn system_path(&mut self) {
        let mut script =
            NixString::default().literal("mkdir -p \"$out/bin\"\n");
        let mut seen = Vec::new();
        for (index, package) in self.spec.packages.iter().enumerate() {
            for (path, _) in &package.files {
                let Some(binary) = path.strip_prefix("bin/") else {
                    continue;
                };
                // buildEnv refuses collisions; the first package wins
                // here so that a spec with a clash still builds.
                if binary.contains('/') || seen.contains(&binary) {
                    continue;
                }
                seen.push(binary);
                script = script
                    .literal("ln -s \"")
                    .interpolate(&format!("package_{index}"))
                    .literal(&format!(
                        "/bin/{binary}\" \"$out/bin/{binary}\"\n"
                    ));
            }
        }
        self.derivation("system_path", "system-path", script, &[]);
    }

    fn kernel(&mut self) {
        let version = &self.spec.kernel_version;
        self.derivation(
            "kernel",
            &format!("linux-{version}"),
            NixString::default().literal(&format!(
                "mkdir -p \"$out\"\nprintf 'test kernel image {version}\\n' \
                 > \"$out/bzImage\"\n"
            )),
            &[],
        );
        self.derivation(
            "kernel_modules",
            &format!("linux-{version}-modules"),
            NixString::default().literal(&format!(
                "mkdir -p \"$out/lib/modules/{version}\"\n"
            )),
            &[],
        );
        self.derivation(
            "initrd",
            &format!("initrd-linux-{version}"),
            NixString::default().literal(&format!(
                "mkdir -p \"$out\"\nprintf 'test initrd {version}\\n' \
                 > \"$out/initrd\"\n"
            )),
            &[],
        );
    }

    fn toplevel(&mut self) {
        let spec = self.spec;
        let mut script = NixString::default();
        if spec.build_delay_secs > 0 {
            script = script.literal(&format!(
                "echo 'test system: waiting {} s' >&2\nsleep {}\n",
                spec.build_delay_secs, spec.build_delay_secs
            ));
        }
        if spec.fail_build {
            script = script.literal(
                "echo 'test system: build fails as the spec requests' >&2\n\
                 exit 1\n",
            );
        }
        script = script
            .literal(
                "mkdir -p \"$out/bin\" \"$out/specialisation\"\n\
                 printf '%s' \"$activateScript\" | sed \"s|@out@|$out|g\" \
                 > \"$out/activate\"\n\
                 printf '%s' \"$switchScript\" | sed \"s|@out@|$out|g\" \
                 > \"$out/bin/switch-to-configuration\"\n\
                 printf '%s' \"$initScript\" | sed \"s|@out@|$out|g\" \
                 > \"$out/init\"\n\
                 chmod +x \"$out/activate\" \
                 \"$out/bin/switch-to-configuration\" \"$out/init\"\n\
                 ln -s \"",
            )
            .interpolate("etc")
            .literal("/etc\" \"$out/etc\"\nln -s \"")
            .interpolate("system_path")
            .literal("\" \"$out/sw\"\nln -s \"")
            .interpolate("kernel")
            .literal("/bzImage\" \"$out/kernel\"\nln -s \"")
            .interpolate("kernel_modules")
            .literal("\" \"$out/kernel-modules\"\nln -s \"")
            .interpolate("initrd")
            .literal(
                "/initrd\" \"$out/initrd\"\n\
                 printf '%s' \"$kernelParams\" > \"$out/kernel-params\"\n\
                 printf '%s' \"$label\" > \"$out/nixos-version\"\n\
                 printf '%s' \"$system\" > \"$out/system\"\n\
                 printf 'systemd 2' > \"$out/init-interface-version\"\n",
            );
        let text = |value: &str| NixString::default().literal(value);
        let attrs = [
            ("activateScript".to_owned(), text(ACTIVATE_SCRIPT)),
            ("switchScript".to_owned(), text(&self.switch_script())),
            ("initScript".to_owned(), text(INIT_SCRIPT)),
            (
                "kernelParams".to_owned(),
                text(&spec.kernel_params.join(" ")),
            ),
            ("label".to_owned(), text(&spec.label)),
        ];
        self.derivation(
            "toplevel",
            &format!("nixos-system-{}-{}", spec.host, spec.label),
            script,
            &attrs,
        );
    }

    fn switch_script(&self) -> String {
        let log = shell_quote(&self.spec.switch_log.to_string_lossy());
        let ending = if self.spec.fail_switch {
            "echo 'switch-to-configuration: failing as the test system \
             requests' >&2\nexit 1\n"
        } else {
            "exit 0\n"
        };
        format!(
            "#!/bin/sh\n\
             # Test system: records the action instead of activating.\n\
             printf '%s %s\\n' \"$1\" '@out@' >> {log}\n\
             {ending}"
        )
    }
}

/// The `activate` script: the snippet frame of a real one, with
/// snippets that do nothing.
const ACTIVATE_SCRIPT: &str = "#!/bin/sh\n\
systemConfig='@out@'\n\
_status=0\n\
#### Activation script snippet etc:\n\
_localstatus=0\n\
: setting up /etc from $systemConfig/etc\n\
#### Activation script snippet users:\n\
_localstatus=0\n\
: creating users\n\
exit $_status\n";

const INIT_SCRIPT: &str = "#!/bin/sh\n\
systemConfig='@out@'\n\
echo \"test system: stage 2 of $systemConfig\"\n\
exec \"$systemConfig/activate\"\n";

/// Formats a derivation attribute value as Nix text.
fn value_text(value: &NixString) -> String {
    format!("\"{}\"", value.0)
}

/// Returns the mode NixOS gives an `/etc` file that is written as a
/// copy rather than a link.
fn etc_mode(path: &str) -> Option<&'static str> {
    if path == "sudoers" {
        Some("0440")
    } else if path.starts_with("ssh/authorized_keys.d/") {
        Some("0444")
    } else {
        None
    }
}

/// Commands writing the `.mode`, `.uid` and `.gid` sidecars.
fn sidecars(path: &str, mode: &str) -> String {
    format!(
        "printf '%s' '{mode}' > \"$out/etc/{path}.mode\"\n\
         printf '%s' 'root' > \"$out/etc/{path}.uid\"\n\
         printf '%s' 'root' > \"$out/etc/{path}.gid\"\n"
    )
}

fn mkdir_parent(path: &str) -> String {
    match path.rsplit_once('/') {
        Some((dir, _)) => format!("mkdir -p \"$out/etc/{dir}\"\n"),
        None => String::new(),
    }
}

fn is_executable(path: &str) -> bool {
    path.starts_with("bin/") || path.starts_with("sbin/")
}

/// Makes a unit or file name safe for a store name the way NixOS does:
/// `@` and `:` become `-`.
fn store_safe(name: &str) -> String {
    name.replace(['@', ':'], "-")
}

fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

/// Checks every name that ends up in a store name, a shell command or
/// the flake text, so that the generated flake is well formed.
fn validate_spec(spec: &SystemSpec) -> Result<()> {
    let word =
        |field: &'static str, value: &str, extra: &[u8]| -> Result<()> {
            let valid = !value.is_empty()
                && !value.starts_with(['-', '.'])
                && value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || extra.contains(&b));
            if valid {
                Ok(())
            } else {
                Err(Error::invalid(
                    field,
                    value,
                    format!(
                        "expected letters, digits and {:?}, not starting with \
                     '-' or '.'",
                        String::from_utf8_lossy(extra)
                    ),
                ))
            }
        };
    word("host name", &spec.host, b"-")?;
    if !spec.host.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Err(Error::invalid(
            "host name",
            &spec.host,
            "must start with a letter",
        ));
    }
    word("label", &spec.label, b"._-")?;
    word("system", &spec.system, b"_-")?;
    word("kernel version", &spec.kernel_version, b"._-")?;
    for package in &spec.packages {
        word("package name", &package.name, b"._+-")?;
        if !package.version.is_empty() {
            word("package version", &package.version, b"._+-")?;
        }
        for (path, _) in &package.files {
            relative_path("package file", path)?;
        }
    }
    for (name, _) in &spec.units {
        word("unit name", name, b"._@:-")?;
    }
    for (path, _) in spec.etc.iter().chain(&spec.etc_links) {
        relative_path("/etc path", path)?;
    }
    for param in &spec.kernel_params {
        if param.is_empty() || param.chars().any(|c| c.is_whitespace()) {
            return Err(Error::invalid(
                "kernel parameter",
                param,
                "must be one word",
            ));
        }
    }
    if !spec.switch_log.is_absolute() {
        return Err(Error::invalid(
            "switch log",
            spec.switch_log.display().to_string(),
            "must be an absolute path",
        ));
    }
    Ok(())
}

fn relative_path(field: &'static str, path: &str) -> Result<()> {
    let valid = !path.is_empty()
        && path.split('/').all(|component| {
            !component.is_empty()
                && component != "."
                && component != ".."
                && !component.starts_with('-')
                && component.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || b"._+@-".contains(&b)
                })
        });
    if valid {
        Ok(())
    } else {
        Err(Error::invalid(
            field,
            path,
            "expected a relative path of letters, digits and ._+@-",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo() -> SystemSpec {
        SystemSpec::demo("demo", Path::new("/tmp/switch.log"))
    }

    #[test]
    fn nix_strings_escape_interpolation() {
        let text = NixString::default()
            .literal("a\"b\\c${x}\n")
            .interpolate("y")
            .finish();
        assert_eq!(text, "\"a\\\"b\\\\c\\${x}\\n${y}\"");
    }

    #[test]
    fn demo_flake_names_host_and_packages() {
        let text = demo().to_flake_nix().unwrap();
        assert!(text.contains("nixosConfigurations.demo.config"));
        assert!(text.contains("\"hello-2.12.1\""));
        assert!(text.contains("\"unit-sshd.service\""));
        assert!(text.contains("${package_1}/bin/sshd"), "{text}");
    }

    #[test]
    fn unknown_package_reference_rejected() {
        let mut spec = demo();
        spec.set_unit("x.service", "ExecStart=@pkg:missing@/bin/x\n");
        assert!(spec.to_flake_nix().is_err());
    }

    #[test]
    fn unsafe_names_rejected() {
        let mut spec = demo();
        spec.set_etc("../passwd", "x");
        assert!(spec.to_flake_nix().is_err());

        let mut spec = demo();
        spec.host = "demo\"; x = 1".into();
        assert!(spec.to_flake_nix().is_err());

        let mut spec = demo();
        spec.set_package(Package::with_binary("a b", "1"));
        assert!(spec.to_flake_nix().is_err());

        let mut spec = demo();
        spec.switch_log = "relative.log".into();
        assert!(spec.to_flake_nix().is_err());
    }

    #[test]
    fn demo_update_changes_versions() {
        let next = demo().demo_update();
        let hello = next.packages.iter().find(|p| p.name == "hello").unwrap();
        assert_eq!(hello.version, "2.12.2");
        assert!(next.packages.iter().any(|p| p.name == "jq"));
        assert!(next.units.iter().any(|(name, _)| name == "backup.timer"));
    }
}
