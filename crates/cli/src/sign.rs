//! Signing with `ssh-keygen -Y sign`, so that keys held by ssh-agent and
//! FIDO security keys (`sk-` types, which ask for a touch) work as well
//! as key files.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use countersign_core::sshsig::Namespace;

/// Signs `message` with the key at `key_path` (a private key, or a public
/// key whose private half is in ssh-agent) and returns the armored
/// signature. The prompt for a touch or PIN goes to the terminal.
pub fn sign(
    key_path: &Path,
    namespace: Namespace,
    message: &[u8],
) -> Result<String> {
    let mut child = Command::new("ssh-keygen")
        .args(["-q", "-Y", "sign", "-n", namespace.as_str(), "-f"])
        .arg(key_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("failed to start ssh-keygen; install openssh-client")?;
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(message)
        .context("failed to pass the message to ssh-keygen")?;
    let output = child
        .wait_with_output()
        .context("failed to wait for ssh-keygen")?;
    if !output.status.success() {
        bail!(
            "ssh-keygen -Y sign failed with the key {} ({}); check that \
             the key exists and is readable, or loaded in ssh-agent",
            key_path.display(),
            output.status
        );
    }
    String::from_utf8(output.stdout)
        .context("ssh-keygen printed a signature that is not UTF-8")
}
