//! Real `ssh-keygen` keys and signatures for unit tests.

use std::path::PathBuf;
use std::process::Command;

use ssh_key::PublicKey;

pub(crate) struct TestKey {
    _dir: tempfile::TempDir,
    pub(crate) path: PathBuf,
    pub(crate) public: PublicKey,
}

impl TestKey {
    pub(crate) fn generate(comment: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        let status = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
            .arg(&path)
            .status()
            .expect("ssh-keygen runs");
        assert!(status.success(), "ssh-keygen failed to make a key");
        let public =
            PublicKey::read_openssh_file(path.with_extension("pub")).unwrap();
        Self {
            _dir: dir,
            path,
            public,
        }
    }

    pub(crate) fn sign(&self, namespace: &str, message: &[u8]) -> String {
        let message_path = self.path.with_extension("msg");
        std::fs::write(&message_path, message).unwrap();
        let output = Command::new("ssh-keygen")
            .args(["-Y", "sign", "-n", namespace, "-f"])
            .arg(&self.path)
            .arg(&message_path)
            .output()
            .expect("ssh-keygen runs");
        assert!(output.status.success(), "ssh-keygen -Y sign failed");
        std::fs::read_to_string(message_path.with_extension("msg.sig"))
            .unwrap()
    }

    pub(crate) fn openssh(&self) -> String {
        self.public.to_openssh().unwrap()
    }
}
