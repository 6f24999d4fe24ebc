//! SSH signatures (SSHSIG, as made by `ssh-keygen -Y sign`) over
//! countersign's own messages.
//!
//! Each purpose has its own namespace, so a signature made for git, for
//! a file or for another countersign purpose never counts here. The
//! `ssh-key` crate checks the namespace, the embedded key and the
//! signature itself, but not the flags of security-key (`sk-`)
//! signatures; this module requires user presence on every one of them
//! and user verification where the policy asks for it.

use ssh_key::{Algorithm, PublicKey, SshSig};

/// The purposes for which countersign accepts SSH signatures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Namespace {
    /// Approving a statement.
    Approve,
    /// Rejecting a statement.
    Reject,
    /// Signing a server challenge to open an API session.
    Login,
}

impl Namespace {
    pub fn as_str(self) -> &'static str {
        match self {
            Namespace::Approve => "countersign-approve",
            Namespace::Reject => "countersign-reject",
            Namespace::Login => "countersign-login",
        }
    }
}

/// The flag bit of a FIDO signature that says a user touched the key.
const FLAG_USER_PRESENT: u8 = 0x01;
/// The flag bit that says the key verified the user (PIN or biometric).
const FLAG_USER_VERIFIED: u8 = 0x04;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SshSignatureError {
    #[error("the signature is not an armored SSH signature: {0}")]
    Malformed(String),
    #[error("the signature was made in namespace {found:?}, not {expected:?}")]
    WrongNamespace {
        found: String,
        expected: &'static str,
    },
    #[error("the signature was made with another key than {expected}")]
    WrongKey { expected: String },
    #[error("the signature does not verify: {0}")]
    Invalid(String),
    #[error("the security key did not report user presence (no touch)")]
    UserNotPresent,
    #[error(
        "the security key did not report user verification (PIN or biometric), which the policy requires"
    )]
    UserNotVerified,
}

/// Verifies an armored SSHSIG over `message` in `namespace` by `key`.
pub fn verify(
    key: &PublicKey,
    namespace: Namespace,
    message: &[u8],
    armored: &str,
    require_user_verification: bool,
) -> Result<(), SshSignatureError> {
    let signature = parse(armored)?;
    if signature.namespace() != namespace.as_str() {
        return Err(SshSignatureError::WrongNamespace {
            found: signature.namespace().to_owned(),
            expected: namespace.as_str(),
        });
    }
    if signature.public_key() != key.key_data() {
        return Err(SshSignatureError::WrongKey {
            expected: fingerprint(key),
        });
    }
    key.verify(namespace.as_str(), message, &signature)
        .map_err(|error| SshSignatureError::Invalid(error.to_string()))?;
    check_security_key_flags(&signature, require_user_verification)
}

/// Decodes an armored SSHSIG without verifying it.
pub fn parse(armored: &str) -> Result<SshSig, SshSignatureError> {
    let signature = SshSig::from_pem(armored.trim().as_bytes())
        .map_err(|error| SshSignatureError::Malformed(error.to_string()))?;
    // The version field is not covered by the signature, and the decoder
    // accepts any version up to 1, so without this check a third party
    // could turn one valid signature into a second one by changing it.
    if signature.version() != SshSig::VERSION {
        return Err(SshSignatureError::Malformed(format!(
            "unsupported SSHSIG version {} (expected {}); sign with \
             ssh-keygen -Y sign",
            signature.version(),
            SshSig::VERSION
        )));
    }
    Ok(signature)
}

/// The SHA-256 fingerprint of a key, as `ssh-keygen -l` shows it.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(ssh_key::HashAlg::Sha256).to_string()
}

/// Requires the user-presence flag, and user verification if asked, on
/// signatures of security keys. The flags byte precedes the 4-byte
/// counter at the end of the signature bytes, and the signature covers
/// both, so they cannot be altered without breaking it.
fn check_security_key_flags(
    signature: &SshSig,
    require_user_verification: bool,
) -> Result<(), SshSignatureError> {
    let is_security_key = matches!(
        signature.algorithm(),
        Algorithm::SkEd25519 | Algorithm::SkEcdsaSha2NistP256
    );
    if !is_security_key {
        return Ok(());
    }
    let bytes = signature.signature_bytes();
    let flags = bytes
        .len()
        .checked_sub(5)
        .map(|index| bytes[index])
        .ok_or_else(|| {
            SshSignatureError::Malformed(
                "security-key signature too short for its flags".into(),
            )
        })?;
    if flags & FLAG_USER_PRESENT == 0 {
        return Err(SshSignatureError::UserNotPresent);
    }
    if require_user_verification && flags & FLAG_USER_VERIFIED == 0 {
        return Err(SshSignatureError::UserNotVerified);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_keys::TestKey;
    use ed25519_dalek::Signer;
    use sha2::{Digest, Sha256};
    use ssh_key::public::{KeyData, SkEd25519};
    use ssh_key::{HashAlg, Signature};

    #[test]
    fn ssh_keygen_signature_verifies() {
        let key = TestKey::generate("phone");
        let armored = key.sign("countersign-approve", b"statement");
        verify(
            &key.public,
            Namespace::Approve,
            b"statement",
            &armored,
            false,
        )
        .unwrap();
    }

    #[test]
    fn tampered_message_fails() {
        let key = TestKey::generate("phone");
        let armored = key.sign("countersign-approve", b"statement");
        let error = verify(
            &key.public,
            Namespace::Approve,
            b"statement!",
            &armored,
            false,
        )
        .unwrap_err();
        assert!(matches!(error, SshSignatureError::Invalid(_)), "{error}");
    }

    #[test]
    fn other_namespace_fails() {
        let key = TestKey::generate("phone");
        for namespace in ["git", "file", "countersign-reject"] {
            let armored = key.sign(namespace, b"statement");
            let error = verify(
                &key.public,
                Namespace::Approve,
                b"statement",
                &armored,
                false,
            )
            .unwrap_err();
            assert!(
                matches!(error, SshSignatureError::WrongNamespace { .. }),
                "{namespace}: {error}"
            );
        }
    }

    #[test]
    fn other_key_fails() {
        let signer = TestKey::generate("phone");
        let other = TestKey::generate("laptop");
        let armored = signer.sign("countersign-approve", b"statement");
        let error = verify(
            &other.public,
            Namespace::Approve,
            b"statement",
            &armored,
            false,
        )
        .unwrap_err();
        assert!(matches!(error, SshSignatureError::WrongKey { .. }));
    }

    #[test]
    fn garbage_is_malformed() {
        let key = TestKey::generate("phone");
        let error =
            verify(&key.public, Namespace::Approve, b"x", "junk", false)
                .unwrap_err();
        assert!(matches!(error, SshSignatureError::Malformed(_)));
    }

    /// Builds a `sk-ssh-ed25519@openssh.com` signature the way a FIDO key
    /// does: the key signs SHA-256(application), the flags, the counter
    /// and SHA-256 of the SSHSIG blob.
    fn security_key_signature(
        flags: u8,
        message: &[u8],
    ) -> (PublicKey, String) {
        let signing = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let application = "ssh:";
        let key_data = KeyData::SkEd25519(SkEd25519::new(
            ssh_key::public::Ed25519PublicKey(
                signing.verifying_key().to_bytes(),
            ),
            application,
        ));
        let namespace = Namespace::Approve.as_str();
        let blob =
            SshSig::signed_data(namespace, HashAlg::Sha512, message).unwrap();
        let counter = 9u32.to_be_bytes();
        let mut signed = Vec::new();
        signed.extend_from_slice(&Sha256::digest(application));
        signed.push(flags);
        signed.extend_from_slice(&counter);
        signed.extend_from_slice(&Sha256::digest(&blob));
        let mut raw = signing.sign(&signed).to_bytes().to_vec();
        raw.push(flags);
        raw.extend_from_slice(&counter);
        let signature = Signature::new(Algorithm::SkEd25519, raw).unwrap();
        let sshsig = SshSig::new(
            key_data.clone(),
            namespace,
            HashAlg::Sha512,
            signature,
        )
        .unwrap();
        let armored = sshsig.to_pem(ssh_key::LineEnding::LF).unwrap();
        (PublicKey::new(key_data, "fido"), armored)
    }

    #[test]
    fn security_key_needs_user_presence() {
        let (key, armored) = security_key_signature(0x00, b"statement");
        let error =
            verify(&key, Namespace::Approve, b"statement", &armored, false)
                .unwrap_err();
        assert_eq!(error, SshSignatureError::UserNotPresent);
    }

    #[test]
    fn security_key_with_touch_verifies() {
        let (key, armored) = security_key_signature(0x01, b"statement");
        verify(&key, Namespace::Approve, b"statement", &armored, false)
            .unwrap();
    }

    #[test]
    fn security_key_needs_verification_when_asked() {
        let (key, armored) = security_key_signature(0x01, b"statement");
        let error =
            verify(&key, Namespace::Approve, b"statement", &armored, true)
                .unwrap_err();
        assert_eq!(error, SshSignatureError::UserNotVerified);
        let (key, armored) = security_key_signature(0x05, b"statement");
        verify(&key, Namespace::Approve, b"statement", &armored, true)
            .unwrap();
    }
}
