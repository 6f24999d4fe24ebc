//! A software authenticator and browser for tests: it writes
//! `clientDataJSON` and `authenticatorData` the way browsers and
//! authenticators do and signs them with a key derived from a seed.
//!
//! Only tests use it (the `testing` feature); its keys are predictable.

use coset::iana;
use coset::{CborSerializable, CoseKeyBuilder};
use sha2::{Digest, Sha256};

use super::{
    Algorithm, Assertion, AuthenticatorFlags, CredentialPublicKey,
    WebAuthnCredential, approval_challenge, encode_base64url, signed_message,
};
use crate::certificate::{Verdict, Vote, VoteSignature};

/// A software WebAuthn authenticator holding one credential.
pub struct TestAuthenticator {
    pub credential_id: Vec<u8>,
    key: SigningKey,
    pub rp_id: String,
    pub origin: String,
    /// The flag byte of the next assertion; UP and UV by default.
    pub flags: u8,
    /// The counter of the last assertion.
    pub sign_count: u32,
    /// Whether each assertion adds one to the counter; when false the
    /// counter stays where it is, as with most synced passkeys (zero).
    pub counting: bool,
}

enum SigningKey {
    P256(p256::ecdsa::SigningKey),
    Ed25519(ed25519_dalek::SigningKey),
}

impl TestAuthenticator {
    /// Creates an authenticator whose key and credential id derive from
    /// `seed`, for relying party `rp_id`, used from page `origin`.
    pub fn new(
        algorithm: Algorithm,
        seed: &[u8],
        rp_id: &str,
        origin: &str,
    ) -> Self {
        let credential_id =
            Sha256::digest([b"credential id\0".as_slice(), seed].concat())
                [..16]
                .to_vec();
        let key = match algorithm {
            Algorithm::Es256 => SigningKey::P256(p256_key(seed)),
            Algorithm::EdDsa => {
                let secret: [u8; 32] =
                    Sha256::digest([b"ed25519\0".as_slice(), seed].concat())
                        .into();
                SigningKey::Ed25519(ed25519_dalek::SigningKey::from_bytes(
                    &secret,
                ))
            }
        };
        Self {
            credential_id,
            key,
            rp_id: rp_id.to_owned(),
            origin: origin.to_owned(),
            flags: AuthenticatorFlags::USER_PRESENT
                | AuthenticatorFlags::USER_VERIFIED,
            sign_count: 0,
            counting: true,
        }
    }

    pub fn algorithm(&self) -> Algorithm {
        match self.key {
            SigningKey::P256(_) => Algorithm::Es256,
            SigningKey::Ed25519(_) => Algorithm::EdDsa,
        }
    }

    /// Encodes the public key as COSE_Key bytes like authenticators do:
    /// kty, alg, crv, x and (for EC2) y.
    pub fn cose_public_key(&self) -> Vec<u8> {
        let key = match &self.key {
            SigningKey::P256(key) => {
                let point = key.verifying_key().to_sec1_point(false);
                let bytes = point.as_bytes();
                CoseKeyBuilder::new_ec2_pub_key(
                    iana::EllipticCurve::P_256,
                    bytes[1..33].to_vec(),
                    bytes[33..65].to_vec(),
                )
                .algorithm(iana::Algorithm::ES256)
                .build()
            }
            SigningKey::Ed25519(key) => CoseKeyBuilder::new_okp_key()
                .algorithm(iana::Algorithm::EdDSA)
                .param(
                    iana::OkpKeyParameter::Crv as i64,
                    ciborium::Value::from(iana::EllipticCurve::Ed25519 as i64),
                )
                .param(
                    iana::OkpKeyParameter::X as i64,
                    ciborium::Value::Bytes(
                        key.verifying_key().to_bytes().to_vec(),
                    ),
                )
                .build(),
        };
        key.to_vec().expect("a COSE key encodes")
    }

    /// Builds the credential as a policy contains it, without a recorded
    /// backup eligibility.
    pub fn credential(&self) -> WebAuthnCredential {
        let algorithm = self.algorithm();
        WebAuthnCredential {
            credential_id: self.credential_id.clone(),
            public_key: CredentialPublicKey::from_cose(
                &self.cose_public_key(),
                algorithm,
            )
            .expect("the test key is valid"),
            algorithm,
            backup_eligible: None,
        }
    }

    /// Writes the inline TOML table of this credential for a policy's
    /// `webauthn = ...` line.
    pub fn policy_entry(&self) -> String {
        format!(
            "{{ credential_id = \"{}\", public_key = \"{}\", algorithm = {} }}",
            encode_base64url(&self.credential_id),
            encode_base64url(&self.cose_public_key()),
            self.algorithm().cose()
        )
    }

    /// Writes `authenticatorData` for this authenticator's relying party
    /// with the given flags and counter and nothing after them.
    pub fn authenticator_data(&self, flags: u8, sign_count: u32) -> Vec<u8> {
        let mut data = Sha256::digest(self.rp_id.as_bytes()).to_vec();
        data.push(flags);
        data.extend_from_slice(&sign_count.to_be_bytes());
        data
    }

    /// Writes `clientDataJSON` the way browsers do: `type`, `challenge`,
    /// `origin` and `crossOrigin`, in that order, without spaces.
    pub fn client_data_json(
        kind: &str,
        challenge: &[u8],
        origin: &str,
    ) -> Vec<u8> {
        format!(
            "{{\"type\":{},\"challenge\":\"{}\",\"origin\":{},\
             \"crossOrigin\":false}}",
            serde_json::to_string(kind).expect("a string encodes"),
            encode_base64url(challenge),
            serde_json::to_string(origin).expect("a string encodes"),
        )
        .into_bytes()
    }

    /// Signs `authenticatorData || SHA-256(clientDataJSON)`: DER for
    /// ES256, the 64 raw bytes for Ed25519.
    pub fn sign(
        &self,
        authenticator_data: &[u8],
        client_data_json: &[u8],
    ) -> Vec<u8> {
        let message = signed_message(authenticator_data, client_data_json);
        match &self.key {
            SigningKey::P256(key) => {
                use p256::ecdsa::signature::Signer;
                let signature: p256::ecdsa::Signature = key.sign(&message);
                signature.to_der().as_bytes().to_vec()
            }
            SigningKey::Ed25519(key) => {
                use ed25519_dalek::Signer;
                key.sign(&message).to_bytes().to_vec()
            }
        }
    }

    /// Makes an assertion over `challenge` from this authenticator's
    /// origin with its current flags, advancing the counter if it counts.
    pub fn assert(&mut self, challenge: [u8; 32]) -> Assertion {
        if self.counting {
            self.sign_count += 1;
        }
        let authenticator_data =
            self.authenticator_data(self.flags, self.sign_count);
        let client_data_json =
            Self::client_data_json("webauthn.get", &challenge, &self.origin);
        let signature = self.sign(&authenticator_data, &client_data_json);
        Assertion {
            credential_id: self.credential_id.clone(),
            authenticator_data,
            client_data_json,
            signature,
        }
    }

    /// Makes a vote by `approver` on `statement_bytes`.
    pub fn vote(
        &mut self,
        approver: &str,
        statement_bytes: &[u8],
        verdict: Verdict,
    ) -> Vote {
        let assertion =
            self.assert(approval_challenge(statement_bytes, verdict));
        Vote {
            approver: approver.to_owned(),
            signature: VoteSignature::from_assertion(&assertion),
        }
    }

    /// Makes a registration response over `challenge` with attestation
    /// "none": the attestation object and `clientDataJSON`.
    pub fn register(&self, challenge: [u8; 32]) -> (Vec<u8>, Vec<u8>) {
        let flags = self.flags | AuthenticatorFlags::ATTESTED_CREDENTIAL_DATA;
        let mut auth_data = self.authenticator_data(flags, self.sign_count);
        auth_data.extend_from_slice(&[0; 16]);
        let id_length =
            u16::try_from(self.credential_id.len()).expect("a short id");
        auth_data.extend_from_slice(&id_length.to_be_bytes());
        auth_data.extend_from_slice(&self.credential_id);
        auth_data.extend_from_slice(&self.cose_public_key());
        let object = ciborium::Value::Map(vec![
            ("fmt".into(), "none".into()),
            ("attStmt".into(), ciborium::Value::Map(Vec::new())),
            ("authData".into(), ciborium::Value::Bytes(auth_data)),
        ]);
        let mut attestation_object = Vec::new();
        ciborium::ser::into_writer(&object, &mut attestation_object)
            .expect("CBOR encodes");
        let client_data_json = Self::client_data_json(
            "webauthn.create",
            &challenge,
            &self.origin,
        );
        (attestation_object, client_data_json)
    }
}

/// Derives a valid P-256 secret scalar from `seed`.
fn p256_key(seed: &[u8]) -> p256::ecdsa::SigningKey {
    (0u8..)
        .find_map(|round| {
            let bytes = Sha256::digest(
                [b"p256\0".as_slice(), seed, &[round]].concat(),
            );
            p256::ecdsa::SigningKey::from_slice(&bytes).ok()
        })
        .expect("a valid scalar within 256 tries")
}
