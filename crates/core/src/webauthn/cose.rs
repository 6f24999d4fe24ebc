//! Credential public keys in COSE_Key form (RFC 9052) and the signature
//! algorithms countersign accepts for them.

use std::fmt;

use ciborium::Value;
use coset::iana::{self, EnumI64};
use coset::{CborSerializable, CoseKey, KeyType, Label};
use p256::ecdsa::signature::Verifier as _;

use super::WebAuthnError;

/// A COSE signature algorithm that countersign verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// ECDSA on P-256 with SHA-256, COSE algorithm -7.
    Es256,
    /// Ed25519, COSE algorithm -8.
    EdDsa,
}

impl Algorithm {
    /// Maps a COSE algorithm number to a supported algorithm. RS256
    /// (-257) is not supported.
    pub fn from_cose(number: i64) -> Result<Self, WebAuthnError> {
        match number {
            -7 => Ok(Algorithm::Es256),
            -8 => Ok(Algorithm::EdDsa),
            other => Err(WebAuthnError::UnsupportedAlgorithm(other)),
        }
    }

    pub fn cose(self) -> i64 {
        match self {
            Algorithm::Es256 => -7,
            Algorithm::EdDsa => -8,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Es256 => "ES256",
            Algorithm::EdDsa => "EdDSA",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A validated credential public key, with the COSE_Key bytes it came
/// from.
#[derive(Clone)]
pub struct CredentialPublicKey {
    cose: Vec<u8>,
    key: VerifyingKey,
}

#[derive(Clone)]
enum VerifyingKey {
    P256(p256::ecdsa::VerifyingKey),
    Ed25519(ed25519_dalek::VerifyingKey),
}

impl fmt::Debug for CredentialPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CredentialPublicKey({}, {})",
            self.algorithm(),
            hex::encode(self.key_bytes())
        )
    }
}

/// COSE_Key labels (RFC 9052 and RFC 9053).
const CRV: i64 = -1;
const X: i64 = -2;
const Y: i64 = -3;
const D: i64 = -4;

fn invalid(reason: impl Into<String>) -> WebAuthnError {
    WebAuthnError::InvalidKey(reason.into())
}

impl CredentialPublicKey {
    /// Parses COSE_Key bytes and requires the key type, curve and `alg`
    /// to agree with `algorithm`: EC2 on P-256 for ES256, OKP on Ed25519
    /// for EdDSA. The point must be valid, and a private key part is
    /// rejected.
    pub fn from_cose(
        bytes: &[u8],
        algorithm: Algorithm,
    ) -> Result<Self, WebAuthnError> {
        let key = parse_key(bytes)?;
        let alg = key_algorithm(&key)?;
        if alg != algorithm.cose() {
            return Err(invalid(format!(
                "its alg is {alg}, but the credential is registered as {} \
                 ({})",
                algorithm.name(),
                algorithm.cose()
            )));
        }
        let params = Params::new(&key.params)?;
        let verifying = match algorithm {
            Algorithm::Es256 => p256_key(&key, &params)?,
            Algorithm::EdDsa => ed25519_key(&key, &params)?,
        };
        Ok(Self {
            cose: bytes.to_vec(),
            key: verifying,
        })
    }

    /// Returns the COSE_Key bytes as registered.
    pub fn cose_bytes(&self) -> &[u8] {
        &self.cose
    }

    /// Returns the algorithm this key verifies.
    pub fn algorithm(&self) -> Algorithm {
        match self.key {
            VerifyingKey::P256(_) => Algorithm::Es256,
            VerifyingKey::Ed25519(_) => Algorithm::EdDsa,
        }
    }

    /// Returns the raw public key: the uncompressed SEC1 point for P-256,
    /// the 32 key bytes for Ed25519. Two credentials with equal raw keys are the
    /// same key whatever their COSE encoding.
    pub fn key_bytes(&self) -> Vec<u8> {
        match &self.key {
            VerifyingKey::P256(key) => {
                key.to_sec1_point(false).as_bytes().to_vec()
            }
            VerifyingKey::Ed25519(key) => key.to_bytes().to_vec(),
        }
    }

    /// Verifies `signature` over `message` with this key's own algorithm.
    pub(super) fn verify(
        &self,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), WebAuthnError> {
        match &self.key {
            VerifyingKey::P256(key) => {
                let signature = strict_der_signature(signature)?;
                key.verify(message, &signature)
                    .map_err(|_| WebAuthnError::InvalidSignature("ES256"))
            }
            VerifyingKey::Ed25519(key) => {
                let signature =
                    ed25519_dalek::Signature::from_slice(signature).map_err(
                        |_| WebAuthnError::MalformedSignature {
                            algorithm: "EdDSA",
                            reason: "an Ed25519 signature is 64 bytes",
                        },
                    )?;
                key.verify_strict(message, &signature)
                    .map_err(|_| WebAuthnError::InvalidSignature("EdDSA"))
            }
        }
    }
}

/// Reads the `alg` number of COSE_Key bytes without judging it.
pub(super) fn cose_algorithm(bytes: &[u8]) -> Result<i64, WebAuthnError> {
    key_algorithm(&parse_key(bytes)?)
}

fn parse_key(bytes: &[u8]) -> Result<CoseKey, WebAuthnError> {
    CoseKey::from_slice(bytes)
        .map_err(|error| invalid(format!("not a COSE_Key: {error}")))
}

fn key_algorithm(key: &CoseKey) -> Result<i64, WebAuthnError> {
    match &key.alg {
        Some(coset::Algorithm::Assigned(alg)) => Ok(alg.to_i64()),
        Some(coset::Algorithm::PrivateUse(number)) => Ok(*number),
        Some(coset::Algorithm::Text(text)) => Err(invalid(format!(
            "its alg is the text {text:?}, not a COSE number"
        ))),
        None => Err(invalid("it has no alg parameter")),
    }
}

/// Parses an ES256 signature as ASN.1 DER and requires that it
/// re-encodes to the same bytes, so that only the one canonical encoding
/// is accepted.
fn strict_der_signature(
    bytes: &[u8],
) -> Result<p256::ecdsa::Signature, WebAuthnError> {
    let malformed = WebAuthnError::MalformedSignature {
        algorithm: "ES256",
        reason: "it is not a strict ASN.1 DER ECDSA signature",
    };
    let signature = p256::ecdsa::Signature::from_der(bytes)
        .map_err(|_| malformed.clone())?;
    if signature.to_der().as_bytes() != bytes {
        return Err(malformed);
    }
    Ok(signature)
}

/// The key-type parameters of a COSE_Key (negative labels). Each label
/// appears at most once because coset rejects repeated map keys.
struct Params<'a> {
    crv: Option<&'a Value>,
    x: Option<&'a Value>,
    y: Option<&'a Value>,
}

impl<'a> Params<'a> {
    fn new(params: &'a [(Label, Value)]) -> Result<Self, WebAuthnError> {
        let mut found = Params {
            crv: None,
            x: None,
            y: None,
        };
        for (label, value) in params {
            match label {
                Label::Int(CRV) => found.crv = Some(value),
                Label::Int(X) => found.x = Some(value),
                Label::Int(Y) => found.y = Some(value),
                Label::Int(D) => {
                    return Err(invalid(
                        "it contains a private key (parameter d); paste only \
                         the public key",
                    ));
                }
                other => {
                    return Err(invalid(format!(
                        "it has an unexpected parameter {other:?}"
                    )));
                }
            }
        }
        Ok(found)
    }
}

fn curve(value: Option<&Value>) -> Result<i64, WebAuthnError> {
    let value = value.ok_or_else(|| invalid("it has no crv parameter"))?;
    value
        .as_integer()
        .and_then(|number| i64::try_from(number).ok())
        .ok_or_else(|| invalid("its crv is not an integer"))
}

fn coordinate<'a>(
    name: &str,
    value: Option<&'a Value>,
) -> Result<&'a [u8; 32], WebAuthnError> {
    let value = value
        .ok_or_else(|| invalid(format!("it has no {name} coordinate")))?;
    let bytes = match value {
        Value::Bytes(bytes) => bytes.as_slice(),
        Value::Bool(_) if name == "y" => {
            return Err(invalid(
                "its point is compressed, which WebAuthn does not allow",
            ));
        }
        _ => {
            return Err(invalid(format!(
                "its {name} coordinate is not a byte string"
            )));
        }
    };
    bytes.try_into().map_err(|_| {
        invalid(format!(
            "its {name} coordinate is {} bytes, not 32",
            bytes.len()
        ))
    })
}

fn p256_key(
    key: &CoseKey,
    params: &Params<'_>,
) -> Result<VerifyingKey, WebAuthnError> {
    if key.kty != KeyType::Assigned(iana::KeyType::EC2) {
        return Err(invalid(
            "ES256 needs an EC2 key, but the key type differs",
        ));
    }
    let crv = curve(params.crv)?;
    if crv != iana::EllipticCurve::P_256.to_i64() {
        return Err(invalid(format!(
            "ES256 needs curve P-256 (1), but crv is {crv}"
        )));
    }
    let x = coordinate("x", params.x)?;
    let y = coordinate("y", params.y)?;
    let mut point = Vec::with_capacity(65);
    point.push(0x04);
    point.extend_from_slice(x);
    point.extend_from_slice(y);
    let verifying = p256::ecdsa::VerifyingKey::from_sec1_bytes(&point)
        .map_err(|_| invalid("its (x, y) is not a point on P-256"))?;
    Ok(VerifyingKey::P256(verifying))
}

fn ed25519_key(
    key: &CoseKey,
    params: &Params<'_>,
) -> Result<VerifyingKey, WebAuthnError> {
    if key.kty != KeyType::Assigned(iana::KeyType::OKP) {
        return Err(invalid(
            "EdDSA needs an OKP key, but the key type differs",
        ));
    }
    let crv = curve(params.crv)?;
    if crv != iana::EllipticCurve::Ed25519.to_i64() {
        return Err(invalid(format!(
            "EdDSA needs curve Ed25519 (6), but crv is {crv}"
        )));
    }
    if params.y.is_some() {
        return Err(invalid("an OKP key has no y coordinate"));
    }
    let x = coordinate("x", params.x)?;
    let verifying = ed25519_dalek::VerifyingKey::from_bytes(x)
        .map_err(|_| invalid("its x is not an Ed25519 public key"))?;
    if verifying.is_weak() {
        return Err(invalid("it is a small-order (weak) Ed25519 key"));
    }
    Ok(VerifyingKey::Ed25519(verifying))
}
