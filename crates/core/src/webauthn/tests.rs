//! Tests of the WebAuthn verifier: real assertions from a software
//! authenticator, each check broken on its own, third-party assertions
//! from passkey-client, property tests and arbitrary input.

use ciborium::Value;
use coset::iana;
use coset::{CborSerializable, CoseKeyBuilder};
use sha2::{Digest, Sha256};

use super::data::AuthenticatorData;
use super::testing::TestAuthenticator;
use super::*;

const RP_ID: &str = "countersign.example.org";
const ORIGIN: &str = "https://countersign.example.org";
const UP: u8 = AuthenticatorFlags::USER_PRESENT;
const UV: u8 = AuthenticatorFlags::USER_VERIFIED;
const BE: u8 = AuthenticatorFlags::BACKUP_ELIGIBLE;
const BS: u8 = AuthenticatorFlags::BACKUP_STATE;
const AT: u8 = AuthenticatorFlags::ATTESTED_CREDENTIAL_DATA;
const ED: u8 = AuthenticatorFlags::EXTENSION_DATA;

fn origins() -> Vec<String> {
    vec![ORIGIN.to_owned()]
}

fn authenticator(algorithm: Algorithm) -> TestAuthenticator {
    TestAuthenticator::new(algorithm, b"phone", RP_ID, ORIGIN)
}

fn challenge() -> [u8; 32] {
    approval_challenge(b"statement 7", Verdict::Approve)
}

/// Verifies `assertion` by `device`'s credential with the standard
/// expectations and the given UV requirement.
fn verify_with(
    device: &TestAuthenticator,
    assertion: &Assertion,
    require_user_verification: bool,
) -> Result<AssertionInfo, WebAuthnError> {
    let origins = origins();
    let expected = ExpectedAssertion {
        rp_id: RP_ID,
        origins: &origins,
        challenge: challenge(),
        require_user_verification,
    };
    verify_assertion(&device.credential(), &expected, assertion)
}

fn verify(
    device: &TestAuthenticator,
    assertion: &Assertion,
) -> Result<AssertionInfo, WebAuthnError> {
    verify_with(device, assertion, false)
}

/// Signs the given parts with `device`'s key, as a compromised browser
/// or a misbehaving authenticator could.
fn signed(
    device: &TestAuthenticator,
    authenticator_data: Vec<u8>,
    client_data_json: Vec<u8>,
) -> Assertion {
    let signature = device.sign(&authenticator_data, &client_data_json);
    Assertion {
        credential_id: device.credential_id.clone(),
        authenticator_data,
        client_data_json,
        signature,
    }
}

fn client_data(origin: &str) -> Vec<u8> {
    TestAuthenticator::client_data_json("webauthn.get", &challenge(), origin)
}

/// Writes `clientDataJSON` with the standard members and `extra` text
/// inserted before the closing brace.
fn client_data_with(extra: &str) -> Vec<u8> {
    let mut text = String::from_utf8(client_data(ORIGIN)).unwrap();
    text.pop();
    text.push_str(extra);
    text.push('}');
    text.into_bytes()
}

fn cbor(value: &Value) -> Vec<u8> {
    let mut bytes = Vec::new();
    ciborium::ser::into_writer(value, &mut bytes).unwrap();
    bytes
}

// Valid assertions.

#[test]
fn es256_assertion_verifies() {
    let mut device = authenticator(Algorithm::Es256);
    let assertion = device.assert(challenge());
    let info = verify_with(&device, &assertion, true).unwrap();
    assert_eq!(info.sign_count, 1);
    assert!(info.flags.user_present());
    assert!(info.flags.user_verified());
}

#[test]
fn eddsa_assertion_verifies() {
    let mut device = authenticator(Algorithm::EdDsa);
    let assertion = device.assert(challenge());
    let info = verify_with(&device, &assertion, true).unwrap();
    assert_eq!(info.sign_count, 1);
}

#[test]
fn counter_is_reported() {
    let mut device = authenticator(Algorithm::Es256);
    device.sign_count = 41;
    let assertion = device.assert(challenge());
    assert_eq!(verify(&device, &assertion).unwrap().sign_count, 42);
}

#[test]
fn extra_client_data_members_are_allowed() {
    let device = authenticator(Algorithm::Es256);
    let data = client_data_with(
        ",\"other_keys_can_be_added_here\":\"do not compare \
         clientDataJSON against a template\"",
    );
    let assertion = signed(&device, device.authenticator_data(UP, 1), data);
    verify(&device, &assertion).unwrap();
}

#[test]
fn absent_cross_origin_is_allowed() {
    let device = authenticator(Algorithm::Es256);
    let data = format!(
        "{{\"type\":\"webauthn.get\",\"challenge\":\"{}\",\"origin\":\"{}\"}}",
        encode_base64url(&challenge()),
        ORIGIN
    );
    let assertion =
        signed(&device, device.authenticator_data(UP, 1), data.into_bytes());
    verify(&device, &assertion).unwrap();
}

#[test]
fn second_configured_origin_is_allowed() {
    let mut device = TestAuthenticator::new(
        Algorithm::Es256,
        b"phone",
        RP_ID,
        "https://approve.countersign.example.org:8443",
    );
    let assertion = device.assert(challenge());
    let origins = vec![
        ORIGIN.to_owned(),
        "https://approve.countersign.example.org:8443".to_owned(),
    ];
    let expected = ExpectedAssertion {
        rp_id: RP_ID,
        origins: &origins,
        challenge: challenge(),
        require_user_verification: false,
    };
    verify_assertion(&device.credential(), &expected, &assertion).unwrap();
}

// clientDataJSON.

#[test]
fn wrong_challenge_fails() {
    let mut device = authenticator(Algorithm::Es256);
    let assertion =
        device.assert(approval_challenge(b"statement 8", Verdict::Approve));
    let error = verify(&device, &assertion).unwrap_err();
    assert!(
        matches!(error, WebAuthnError::WrongChallenge { .. }),
        "{error}"
    );
}

#[test]
fn rejection_challenge_is_not_approval() {
    let mut device = authenticator(Algorithm::Es256);
    let assertion =
        device.assert(approval_challenge(b"statement 7", Verdict::Reject));
    let error = verify(&device, &assertion).unwrap_err();
    assert!(
        matches!(error, WebAuthnError::WrongChallenge { .. }),
        "{error}"
    );
}

#[test]
fn challenges_differ_by_verdict_and_statement() {
    let approve = approval_challenge(b"statement 7", Verdict::Approve);
    let reject = approval_challenge(b"statement 7", Verdict::Reject);
    let other = approval_challenge(b"statement 8", Verdict::Approve);
    assert_ne!(approve, reject);
    assert_ne!(approve, other);
    let mut tagged = b"countersign-approve-v1\0".to_vec();
    tagged.extend_from_slice(b"statement 7");
    assert_eq!(approve, <[u8; 32]>::from(Sha256::digest(&tagged)));
}

#[test]
fn padded_or_standard_challenge_fails() {
    let device = authenticator(Algorithm::Es256);
    let padded = format!("{}=", encode_base64url(&challenge()));
    let standard = base64::engine::general_purpose::STANDARD
        .encode(approval_challenge(b"statement 7", Verdict::Approve));
    for text in [padded, standard] {
        let data = format!(
            "{{\"type\":\"webauthn.get\",\"challenge\":\"{text}\",\
             \"origin\":\"{ORIGIN}\",\"crossOrigin\":false}}"
        );
        let assertion = signed(
            &device,
            device.authenticator_data(UP, 1),
            data.into_bytes(),
        );
        let error = verify(&device, &assertion).unwrap_err();
        assert!(
            matches!(error, WebAuthnError::WrongChallenge { .. }),
            "{text}: {error}"
        );
    }
}

#[test]
fn wrong_origin_fails() {
    let device = authenticator(Algorithm::Es256);
    let origins = [
        "http://countersign.example.org",
        "https://countersign.example.org:8443",
        "https://countersign.example.org:443",
        "https://countersign.example.org/",
        "https://COUNTERSIGN.example.org",
        "https://evil-countersign.example.org",
        "https://countersign.example.org.evil.net",
        "https://sub.countersign.example.org",
        "https://example.org",
        "null",
        "",
    ];
    for origin in origins {
        let assertion = signed(
            &device,
            device.authenticator_data(UP, 1),
            client_data(origin),
        );
        let error = verify(&device, &assertion).unwrap_err();
        assert!(
            matches!(error, WebAuthnError::WrongOrigin { .. }),
            "{origin}: {error}"
        );
    }
}

#[test]
fn top_origin_fails() {
    let device = authenticator(Algorithm::Es256);
    for top in [
        "\"https://evil.example.net\"",
        "\"https://countersign.example.org\"",
        "null",
    ] {
        let data = client_data_with(&format!(",\"topOrigin\":{top}"));
        let assertion =
            signed(&device, device.authenticator_data(UP, 1), data);
        let error = verify(&device, &assertion).unwrap_err();
        assert!(
            matches!(error, WebAuthnError::TopOrigin(_)),
            "{top}: {error}"
        );
    }
}

#[test]
fn cross_origin_true_fails() {
    let device = authenticator(Algorithm::Es256);
    for value in ["true", "null", "\"false\"", "0"] {
        let text = String::from_utf8(client_data(ORIGIN)).unwrap().replace(
            "\"crossOrigin\":false",
            &format!("\"crossOrigin\":{value}"),
        );
        let assertion = signed(
            &device,
            device.authenticator_data(UP, 1),
            text.into_bytes(),
        );
        let error = verify(&device, &assertion).unwrap_err();
        assert!(
            matches!(error, WebAuthnError::CrossOrigin(_)),
            "{value}: {error}"
        );
    }
}

#[test]
fn create_type_is_not_assertion() {
    let device = authenticator(Algorithm::Es256);
    let data = TestAuthenticator::client_data_json(
        "webauthn.create",
        &challenge(),
        ORIGIN,
    );
    let assertion = signed(&device, device.authenticator_data(UP, 1), data);
    let error = verify(&device, &assertion).unwrap_err();
    assert!(matches!(error, WebAuthnError::WrongType { .. }), "{error}");
}

#[test]
fn repeated_client_data_member_fails() {
    let device = authenticator(Algorithm::Es256);
    let data = client_data_with(&format!(
        ",\"challenge\":\"{}\"",
        encode_base64url(&challenge())
    ));
    let assertion = signed(&device, device.authenticator_data(UP, 1), data);
    let error = verify(&device, &assertion).unwrap_err();
    assert!(matches!(error, WebAuthnError::ClientData(_)), "{error}");
}

#[test]
fn client_data_must_be_json_object() {
    let device = authenticator(Algorithm::Es256);
    for data in [
        b"\xff\xfe".to_vec(),
        b"[]".to_vec(),
        b"".to_vec(),
        client_data_with("  garbage"),
        [client_data(ORIGIN), b"{}".to_vec()].concat(),
    ] {
        let assertion =
            signed(&device, device.authenticator_data(UP, 1), data.clone());
        let error = verify(&device, &assertion).unwrap_err();
        assert!(
            matches!(error, WebAuthnError::ClientData(_)),
            "{:?}: {error}",
            String::from_utf8_lossy(&data)
        );
    }
}

// authenticatorData.

#[test]
fn wrong_rp_id_hash_fails() {
    let mut other = TestAuthenticator::new(
        Algorithm::Es256,
        b"phone",
        "evil-example.org",
        ORIGIN,
    );
    let assertion = other.assert(challenge());
    let device = authenticator(Algorithm::Es256);
    let error = verify(&device, &assertion).unwrap_err();
    assert!(
        matches!(error, WebAuthnError::WrongRpIdHash { .. }),
        "{error}"
    );
}

#[test]
fn suffix_rp_id_fails() {
    // An authenticator that signed for example.org must not pass for a
    // relying party whose id merely ends with it, nor the reverse.
    let mut device = TestAuthenticator::new(
        Algorithm::Es256,
        b"phone",
        "example.org",
        ORIGIN,
    );
    let assertion = device.assert(challenge());
    let origins = origins();
    for rp_id in ["evil-example.org", "sub.example.org", "org"] {
        let expected = ExpectedAssertion {
            rp_id,
            origins: &origins,
            challenge: challenge(),
            require_user_verification: false,
        };
        let error =
            verify_assertion(&device.credential(), &expected, &assertion)
                .unwrap_err();
        assert!(
            matches!(error, WebAuthnError::WrongRpIdHash { .. }),
            "{rp_id}: {error}"
        );
    }
}

#[test]
fn missing_user_presence_fails() {
    let mut device = authenticator(Algorithm::Es256);
    device.flags = UV;
    let assertion = device.assert(challenge());
    assert_eq!(
        verify(&device, &assertion).unwrap_err(),
        WebAuthnError::UserNotPresent
    );
}

#[test]
fn missing_user_verification_fails_when_required() {
    let mut device = authenticator(Algorithm::Es256);
    device.flags = UP;
    let assertion = device.assert(challenge());
    assert_eq!(
        verify_with(&device, &assertion, true).unwrap_err(),
        WebAuthnError::UserNotVerified
    );
    verify_with(&device, &assertion, false).unwrap();
}

#[test]
fn backup_state_without_eligibility_fails() {
    let mut device = authenticator(Algorithm::Es256);
    device.flags = UP | BS;
    let assertion = device.assert(challenge());
    assert_eq!(
        verify(&device, &assertion).unwrap_err(),
        WebAuthnError::BackupStateWithoutEligibility
    );
    device.flags = UP | BE | BS;
    let assertion = device.assert(challenge());
    verify(&device, &assertion).unwrap();
}

#[test]
fn backup_eligibility_must_match_registration() {
    let origins = origins();
    let expected = ExpectedAssertion {
        rp_id: RP_ID,
        origins: &origins,
        challenge: challenge(),
        require_user_verification: false,
    };
    for (registered, flags) in [(false, UP | BE), (true, UP)] {
        let mut device = authenticator(Algorithm::Es256);
        device.flags = flags;
        let assertion = device.assert(challenge());
        let mut credential = device.credential();
        credential.backup_eligible = Some(registered);
        let error =
            verify_assertion(&credential, &expected, &assertion).unwrap_err();
        assert_eq!(
            error,
            WebAuthnError::BackupEligibilityChanged {
                registered,
                found: !registered
            }
        );
        credential.backup_eligible = Some(!registered);
        verify_assertion(&credential, &expected, &assertion).unwrap();
    }
}

#[test]
fn trailing_authenticator_data_fails() {
    let device = authenticator(Algorithm::Es256);
    let mut data = device.authenticator_data(UP, 1);
    data.push(0);
    let assertion = signed(&device, data, client_data(ORIGIN));
    let error = verify(&device, &assertion).unwrap_err();
    assert!(
        matches!(error, WebAuthnError::AuthenticatorData(_)),
        "{error}"
    );
}

#[test]
fn short_authenticator_data_fails() {
    let device = authenticator(Algorithm::Es256);
    let mut data = device.authenticator_data(UP, 1);
    data.pop();
    let assertion = signed(&device, data, client_data(ORIGIN));
    let error = verify(&device, &assertion).unwrap_err();
    assert!(
        matches!(error, WebAuthnError::AuthenticatorData(_)),
        "{error}"
    );
}

#[test]
fn extension_map_with_ed_flag_verifies() {
    let device = authenticator(Algorithm::Es256);
    let mut data = device.authenticator_data(UP | ED, 1);
    data.extend(cbor(&Value::Map(vec![(
        Value::Text("credProtect".into()),
        Value::Integer(2.into()),
    )])));
    let assertion = signed(&device, data.clone(), client_data(ORIGIN));
    verify(&device, &assertion).unwrap();
    let parsed = AuthenticatorData::parse(&data).unwrap();
    assert!(parsed.extensions.is_some());
}

#[test]
fn malformed_extension_data_fails() {
    let device = authenticator(Algorithm::Es256);
    let map = cbor(&Value::Map(vec![(
        Value::Text("credProtect".into()),
        Value::Integer(2.into()),
    )]));
    let repeated = cbor(&Value::Map(vec![
        (Value::Text("a".into()), Value::Integer(1.into())),
        (Value::Text("a".into()), Value::Integer(2.into())),
    ]));
    let integer_key = cbor(&Value::Map(vec![(
        Value::Integer(1.into()),
        Value::Integer(2.into()),
    )]));
    let cases: Vec<(&str, u8, Vec<u8>)> = vec![
        ("ED flag without map", UP | ED, Vec::new()),
        ("map without ED flag", UP, map.clone()),
        (
            "byte after the map",
            UP | ED,
            [map.clone(), vec![0]].concat(),
        ),
        ("two maps", UP | ED, [map.clone(), map.clone()].concat()),
        ("not a map", UP | ED, cbor(&Value::Integer(5.into()))),
        ("repeated key", UP | ED, repeated),
        ("integer key", UP | ED, integer_key),
        ("truncated map", UP | ED, map[..map.len() - 1].to_vec()),
    ];
    for (name, flags, tail) in cases {
        let mut data = device.authenticator_data(flags, 1);
        data.extend(tail);
        let assertion = signed(&device, data, client_data(ORIGIN));
        let error = verify(&device, &assertion).unwrap_err();
        assert!(
            matches!(error, WebAuthnError::AuthenticatorData(_)),
            "{name}: {error}"
        );
    }
}

#[test]
fn attested_data_in_assertion_fails() {
    let device = authenticator(Algorithm::Es256);
    let (object, _) = device.register(challenge());
    let Value::Map(entries) =
        ciborium::de::from_reader::<Value, _>(object.as_slice()).unwrap()
    else {
        panic!("the attestation object is a map");
    };
    let auth_data = entries
        .into_iter()
        .find_map(|(key, value)| match (key, value) {
            (Value::Text(key), Value::Bytes(bytes)) if key == "authData" => {
                Some(bytes)
            }
            _ => None,
        })
        .unwrap();
    assert_ne!(auth_data[32] & AT, 0);
    let assertion = signed(&device, auth_data, client_data(ORIGIN));
    let error = verify(&device, &assertion).unwrap_err();
    assert!(
        matches!(error, WebAuthnError::AuthenticatorData(_)),
        "{error}"
    );
}

// Credential id and signature.

#[test]
fn other_credential_id_fails() {
    let mut device = authenticator(Algorithm::Es256);
    let mut assertion = device.assert(challenge());
    assertion.credential_id[0] ^= 1;
    let error = verify(&device, &assertion).unwrap_err();
    assert!(
        matches!(error, WebAuthnError::WrongCredential { .. }),
        "{error}"
    );
}

#[test]
fn bogus_signature_fails() {
    for algorithm in [Algorithm::Es256, Algorithm::EdDsa] {
        let mut device = authenticator(algorithm);
        let mut assertion = device.assert(challenge());
        let last = assertion.signature.len() - 1;
        assertion.signature[last] ^= 0x01;
        let error = verify(&device, &assertion).unwrap_err();
        assert!(
            matches!(error, WebAuthnError::InvalidSignature(_)),
            "{algorithm}: {error}"
        );
    }
}

#[test]
fn other_key_signature_fails() {
    for algorithm in [Algorithm::Es256, Algorithm::EdDsa] {
        let device = authenticator(algorithm);
        let mut thief =
            TestAuthenticator::new(algorithm, b"laptop", RP_ID, ORIGIN);
        thief.credential_id = device.credential_id.clone();
        let assertion = thief.assert(challenge());
        let error = verify(&device, &assertion).unwrap_err();
        assert_eq!(
            error,
            WebAuthnError::InvalidSignature(algorithm.name()),
            "{algorithm}"
        );
    }
}

#[test]
fn signature_of_other_algorithm_fails() {
    // An EdDSA credential with an ES256 signature over the same bytes,
    // and the reverse: the stored algorithm decides, never the message.
    let pairs = [
        (Algorithm::EdDsa, Algorithm::Es256),
        (Algorithm::Es256, Algorithm::EdDsa),
    ];
    for (registered, used) in pairs {
        let device = authenticator(registered);
        let other = TestAuthenticator::new(used, b"phone", RP_ID, ORIGIN);
        let data = device.authenticator_data(UP, 1);
        let client = client_data(ORIGIN);
        let assertion = Assertion {
            credential_id: device.credential_id.clone(),
            signature: other.sign(&data, &client),
            authenticator_data: data,
            client_data_json: client,
        };
        let error = verify(&device, &assertion).unwrap_err();
        assert!(
            matches!(error, WebAuthnError::MalformedSignature { .. }),
            "{registered} with {used}: {error}"
        );
    }
}

/// Splits a DER ECDSA signature into its r and s integer contents.
fn der_parts(der: &[u8]) -> (Vec<u8>, Vec<u8>) {
    assert_eq!(der[0], 0x30);
    let body = &der[2..];
    assert_eq!(body[0], 0x02);
    let r_length = usize::from(body[1]);
    let r = body[2..2 + r_length].to_vec();
    let rest = &body[2 + r_length..];
    assert_eq!(rest[0], 0x02);
    let s = rest[2..2 + usize::from(rest[1])].to_vec();
    (r, s)
}

fn der_integer(content: &[u8]) -> Vec<u8> {
    [vec![0x02, content.len() as u8], content.to_vec()].concat()
}

#[test]
fn non_canonical_der_fails() {
    let mut device = authenticator(Algorithm::Es256);
    let assertion = device.assert(challenge());
    let der = assertion.signature.clone();
    let (r, s) = der_parts(&der);
    let body = [der_integer(&r), der_integer(&s)].concat();
    // The same signature, written in ways strict DER forbids.
    let long_length =
        [vec![0x30, 0x81, body.len() as u8], body.clone()].concat();
    let padded_r = [
        der_integer(&[[0x00].as_slice(), &r].concat()),
        der_integer(&s),
    ]
    .concat();
    let padded_r = [vec![0x30, padded_r.len() as u8], padded_r].concat();
    let trailing = [der.clone(), vec![0x00]].concat();
    let indefinite = [vec![0x30, 0x80], body.clone(), vec![0, 0]].concat();
    let wrong_tag = [vec![0x31, body.len() as u8], body.clone()].concat();
    let mut raw = vec![0; 64];
    let r_trimmed = r.strip_prefix(&[0]).unwrap_or(&r);
    let s_trimmed = s.strip_prefix(&[0]).unwrap_or(&s);
    raw[32 - r_trimmed.len()..32].copy_from_slice(r_trimmed);
    raw[64 - s_trimmed.len()..].copy_from_slice(s_trimmed);
    let cases = [
        ("long-form length", long_length),
        ("leading zero in r", padded_r),
        ("trailing byte", trailing),
        ("indefinite length", indefinite),
        ("SET tag", wrong_tag),
        ("raw r||s", raw),
        ("empty", Vec::new()),
    ];
    for (name, signature) in cases {
        let mut broken = assertion.clone();
        broken.signature = signature;
        let error = verify(&device, &broken).unwrap_err();
        assert!(
            matches!(error, WebAuthnError::MalformedSignature { .. }),
            "{name}: {error}"
        );
    }
    verify(&device, &assertion).unwrap();
}

#[test]
fn oversized_inputs_fail() {
    let mut device = authenticator(Algorithm::Es256);
    let assertion = device.assert(challenge());
    let mut big = assertion.clone();
    big.client_data_json = client_data_with(&format!(
        ",\"pad\":\"{}\"",
        "x".repeat(MAX_CLIENT_DATA_JSON_BYTES)
    ));
    let error = verify(&device, &big).unwrap_err();
    assert!(matches!(error, WebAuthnError::TooLarge { .. }), "{error}");
    let mut big = assertion;
    big.signature = vec![0; 4096];
    let error = verify(&device, &big).unwrap_err();
    assert!(matches!(error, WebAuthnError::TooLarge { .. }), "{error}");
}

// Encoding.

#[test]
fn base64url_decoding_is_strict() {
    let mut device = authenticator(Algorithm::Es256);
    let assertion = device.assert(challenge());
    let id = encode_base64url(&assertion.credential_id);
    let data = encode_base64url(&assertion.authenticator_data);
    let client = encode_base64url(&assertion.client_data_json);
    let signature = encode_base64url(&assertion.signature);
    let decoded =
        Assertion::from_base64url(&id, &data, &client, &signature).unwrap();
    assert_eq!(decoded, assertion);

    let standard = base64::engine::general_purpose::STANDARD;
    let bad = [
        format!("{id}=="),
        format!("{id} "),
        format!(" {id}"),
        standard.encode([0xfb, 0xff, 0xbf]),
        format!("{}=", encode_base64url(&[1, 2])),
        // The last symbol carries bits beyond the data: non-canonical.
        "AB".to_owned(),
    ];
    for text in bad {
        let error =
            Assertion::from_base64url(&text, &data, &client, &signature)
                .unwrap_err();
        assert_eq!(
            error,
            WebAuthnError::Encoding {
                field: "credential_id"
            },
            "{text:?}"
        );
    }
}

// Counters.

#[test]
fn counter_must_grow() {
    assert!(check_counter(0, 0).is_ok());
    assert!(check_counter(0, 1).is_ok());
    assert!(check_counter(5, 6).is_ok());
    assert!(check_counter(5, u32::MAX).is_ok());
    for (stored, new) in [(5, 5), (5, 4), (5, 0), (1, 0), (u32::MAX, u32::MAX)]
    {
        assert_eq!(
            check_counter(stored, new).unwrap_err(),
            WebAuthnError::CounterNotIncreased { stored, new },
            "{stored} -> {new}"
        );
    }
}

// COSE keys.

fn ec2_key(
    crv: i64,
    alg: Option<iana::Algorithm>,
    x: Vec<u8>,
    y: Value,
) -> Vec<u8> {
    coset::CoseKey {
        kty: coset::KeyType::Assigned(iana::KeyType::EC2),
        alg: alg.map(coset::Algorithm::Assigned),
        params: vec![
            (coset::Label::Int(-1), Value::from(crv)),
            (coset::Label::Int(-2), Value::Bytes(x)),
            (coset::Label::Int(-3), y),
        ],
        ..Default::default()
    }
    .to_vec()
    .unwrap()
}

fn p256_point(device: &TestAuthenticator) -> (Vec<u8>, Vec<u8>) {
    let key = device.credential().public_key.key_bytes();
    (key[1..33].to_vec(), key[33..].to_vec())
}

#[test]
fn cose_key_consistency_is_checked() {
    let es256 = authenticator(Algorithm::Es256);
    let eddsa = authenticator(Algorithm::EdDsa);
    let (x, y) = p256_point(&es256);
    let mut not_on_curve = y.clone();
    not_on_curve[31] ^= 1;
    let ed_x = eddsa.credential().public_key.key_bytes();
    let okp = |crv: i64, alg: iana::Algorithm, x: Vec<u8>| {
        CoseKeyBuilder::new_okp_key()
            .algorithm(alg)
            .param(-1, Value::from(crv))
            .param(-2, Value::Bytes(x))
            .build()
            .to_vec()
            .unwrap()
    };
    let mut with_private = ec2_key(
        1,
        Some(iana::Algorithm::ES256),
        x.clone(),
        Value::Bytes(y.clone()),
    );
    // Re-encode with a d parameter appended.
    let mut key = coset::CoseKey::from_slice(&with_private).unwrap();
    key.params
        .push((coset::Label::Int(-4), Value::Bytes(vec![1; 32])));
    with_private = key.to_vec().unwrap();
    let mut weak = vec![0u8; 32];
    weak[0] = 1;
    let cases: Vec<(&str, Vec<u8>, Algorithm)> = vec![
        (
            "OKP key registered as ES256",
            eddsa.cose_public_key(),
            Algorithm::Es256,
        ),
        (
            "EC2 key registered as EdDSA",
            es256.cose_public_key(),
            Algorithm::EdDsa,
        ),
        (
            "P-384 curve",
            ec2_key(
                2,
                Some(iana::Algorithm::ES256),
                x.clone(),
                Value::Bytes(y.clone()),
            ),
            Algorithm::Es256,
        ),
        (
            "no alg",
            ec2_key(1, None, x.clone(), Value::Bytes(y.clone())),
            Algorithm::Es256,
        ),
        (
            "alg EdDSA on an EC2 key",
            ec2_key(
                1,
                Some(iana::Algorithm::EdDSA),
                x.clone(),
                Value::Bytes(y.clone()),
            ),
            Algorithm::EdDsa,
        ),
        (
            "compressed point",
            ec2_key(
                1,
                Some(iana::Algorithm::ES256),
                x.clone(),
                Value::Bool(true),
            ),
            Algorithm::Es256,
        ),
        (
            "point not on the curve",
            ec2_key(
                1,
                Some(iana::Algorithm::ES256),
                x.clone(),
                Value::Bytes(not_on_curve),
            ),
            Algorithm::Es256,
        ),
        (
            "short x",
            ec2_key(
                1,
                Some(iana::Algorithm::ES256),
                x[1..].to_vec(),
                Value::Bytes(y.clone()),
            ),
            Algorithm::Es256,
        ),
        ("private key part", with_private, Algorithm::Es256),
        (
            "X25519 curve",
            okp(4, iana::Algorithm::EdDSA, ed_x.clone()),
            Algorithm::EdDsa,
        ),
        (
            "small-order Ed25519 key",
            okp(6, iana::Algorithm::EdDSA, weak),
            Algorithm::EdDsa,
        ),
        (
            "trailing byte",
            [es256.cose_public_key(), vec![0]].concat(),
            Algorithm::Es256,
        ),
        ("not CBOR", vec![0xff, 0x00], Algorithm::Es256),
        ("empty", Vec::new(), Algorithm::Es256),
    ];
    for (name, bytes, algorithm) in cases {
        let error =
            CredentialPublicKey::from_cose(&bytes, algorithm).unwrap_err();
        assert!(
            matches!(error, WebAuthnError::InvalidKey(_)),
            "{name}: {error}"
        );
    }
    CredentialPublicKey::from_cose(&es256.cose_public_key(), Algorithm::Es256)
        .unwrap();
    CredentialPublicKey::from_cose(&eddsa.cose_public_key(), Algorithm::EdDsa)
        .unwrap();
}

#[test]
fn unsupported_algorithms_fail() {
    for number in [-257, -35, -36, -9, -19, 0, 7] {
        assert_eq!(
            Algorithm::from_cose(number).unwrap_err(),
            WebAuthnError::UnsupportedAlgorithm(number)
        );
    }
}

#[test]
fn policy_fields_build_credential() {
    let device = authenticator(Algorithm::EdDsa);
    let credential = WebAuthnCredential::from_policy_fields(
        &encode_base64url(&device.credential_id),
        &encode_base64url(&device.cose_public_key()),
        -8,
        Some(false),
    )
    .unwrap();
    assert_eq!(credential.credential_id, device.credential_id);
    assert_eq!(credential.algorithm, Algorithm::EdDsa);
    let error = WebAuthnCredential::from_policy_fields(
        &encode_base64url(&device.credential_id),
        &encode_base64url(&device.cose_public_key()),
        -7,
        None,
    )
    .unwrap_err();
    assert!(matches!(error, WebAuthnError::InvalidKey(_)), "{error}");
    let error = WebAuthnCredential::from_policy_fields(
        "",
        &encode_base64url(&device.cose_public_key()),
        -8,
        None,
    )
    .unwrap_err();
    assert_eq!(error, WebAuthnError::CredentialIdLength(0));
}

#[test]
fn summary_names_algorithm_and_fingerprint() {
    let device = authenticator(Algorithm::EdDsa);
    let summary = device.credential().summary();
    let id = encode_base64url(&device.credential_id);
    assert!(
        summary.starts_with("webauthn EdDSA credential "),
        "{summary}"
    );
    assert!(summary.contains(&id[..16]), "{summary}");
    assert!(summary.contains(" SHA256:"), "{summary}");
    let other =
        TestAuthenticator::new(Algorithm::EdDsa, b"tablet", RP_ID, ORIGIN);
    assert_ne!(other.credential().summary(), summary);
}

// Registration.

/// A predicate that tells whether an error is the expected one.
type ErrorCheck = fn(&WebAuthnError) -> bool;

fn expected_registration(origins: &[String]) -> ExpectedRegistration<'_> {
    ExpectedRegistration {
        rp_id: RP_ID,
        origins,
        challenge: [9; 32],
    }
}

/// Builds an attestation object around `auth_data`.
fn attestation_object(
    format: &str,
    statement: Vec<(Value, Value)>,
    auth_data: Vec<u8>,
) -> Vec<u8> {
    cbor(&Value::Map(vec![
        ("fmt".into(), format.into()),
        ("attStmt".into(), Value::Map(statement)),
        ("authData".into(), Value::Bytes(auth_data)),
    ]))
}

/// Writes registration `authenticatorData` for `device` with `flags`,
/// `credential_id` and `tail` after the key.
fn registration_data(
    device: &TestAuthenticator,
    flags: u8,
    credential_id: &[u8],
    tail: &[u8],
) -> Vec<u8> {
    let mut data = device.authenticator_data(flags | AT, 0);
    data.extend_from_slice(&[0; 16]);
    data.extend_from_slice(&(credential_id.len() as u16).to_be_bytes());
    data.extend_from_slice(credential_id);
    data.extend_from_slice(&device.cose_public_key());
    data.extend_from_slice(tail);
    data
}

fn create_data() -> Vec<u8> {
    TestAuthenticator::client_data_json("webauthn.create", &[9; 32], ORIGIN)
}

#[test]
fn registration_round_trips_into_policy() {
    for algorithm in [Algorithm::Es256, Algorithm::EdDsa] {
        let mut device = authenticator(algorithm);
        let origins = origins();
        let (object, client) = device.register([9; 32]);
        let registered = parse_registration(
            &object,
            &client,
            &expected_registration(&origins),
        )
        .unwrap();
        assert_eq!(registered.credential_id, device.credential_id);
        assert_eq!(registered.public_key, device.cose_public_key());
        assert_eq!(registered.algorithm, algorithm);
        assert!(!registered.backup_eligible);
        assert!(registered.user_verified);
        assert_eq!(registered.attestation_format, "none");

        let name = crate::ApproverName::parse("phone").unwrap();
        let snippet = registered.to_policy_toml(&name);
        let policy_text = format!(
            "host = \"web1\"\nthreshold = 1\n\
             [webauthn]\nrp_id = \"{RP_ID}\"\norigins = [\"{ORIGIN}\"]\n\
             {snippet}"
        );
        let policy = crate::Policy::from_toml(policy_text.as_bytes())
            .unwrap_or_else(|error| panic!("{error}\n{policy_text}"));
        let approver = &policy.approvers[&name];
        assert!(approver.user_verification);
        let crate::ApproverKey::WebAuthn(credential) = &approver.key else {
            panic!("the approver has a WebAuthn key");
        };
        assert_eq!(credential.backup_eligible, Some(false));
        let settings = policy.webauthn.as_ref().unwrap();
        let assertion = device.assert(challenge());
        verify_assertion(
            credential,
            &settings.expected_assertion(challenge(), true),
            &assertion,
        )
        .unwrap();
    }
}

#[test]
fn registration_with_extensions_verifies() {
    let device = authenticator(Algorithm::Es256);
    let origins = origins();
    let extensions = cbor(&Value::Map(vec![(
        Value::Text("credProtect".into()),
        Value::Integer(2.into()),
    )]));
    let data = registration_data(
        &device,
        UP | ED,
        &device.credential_id,
        &extensions,
    );
    let object = attestation_object("none", Vec::new(), data);
    let registered = parse_registration(
        &object,
        &create_data(),
        &expected_registration(&origins),
    )
    .unwrap();
    assert_eq!(registered.public_key, device.cose_public_key());
}

#[test]
fn registration_checks_client_data() {
    let device = authenticator(Algorithm::Es256);
    let origins = origins();
    let (object, _) = device.register([9; 32]);
    let cases = [
        (
            "get type",
            TestAuthenticator::client_data_json(
                "webauthn.get",
                &[9; 32],
                ORIGIN,
            ),
        ),
        (
            "other challenge",
            TestAuthenticator::client_data_json(
                "webauthn.create",
                &[8; 32],
                ORIGIN,
            ),
        ),
        (
            "other origin",
            TestAuthenticator::client_data_json(
                "webauthn.create",
                &[9; 32],
                "https://evil.example.net",
            ),
        ),
    ];
    for (name, client) in cases {
        let error = parse_registration(
            &object,
            &client,
            &expected_registration(&origins),
        )
        .unwrap_err();
        assert!(
            matches!(
                error,
                WebAuthnError::WrongType { .. }
                    | WebAuthnError::WrongChallenge { .. }
                    | WebAuthnError::WrongOrigin { .. }
            ),
            "{name}: {error}"
        );
    }
}

#[test]
fn registration_checks_authenticator_data() {
    let device = authenticator(Algorithm::Es256);
    let other_rp = TestAuthenticator::new(
        Algorithm::Es256,
        b"phone",
        "example.net",
        ORIGIN,
    );
    let origins = origins();
    let id = device.credential_id.clone();
    let long_id = vec![7; 1024];
    let mut no_at = device.authenticator_data(UP, 0);
    no_at.extend_from_slice(&[0; 16]);
    let data_error = |error: &WebAuthnError| {
        matches!(error, WebAuthnError::AuthenticatorData(_))
    };
    let cases: Vec<(&str, Vec<u8>, ErrorCheck)> = vec![
        (
            "no user presence",
            registration_data(&device, UV, &id, &[]),
            |error| *error == WebAuthnError::UserNotPresent,
        ),
        (
            "BS without BE",
            registration_data(&device, UP | BS, &id, &[]),
            |error| *error == WebAuthnError::BackupStateWithoutEligibility,
        ),
        (
            "trailing byte",
            registration_data(&device, UP, &id, &[0]),
            data_error,
        ),
        (
            "other relying party",
            registration_data(&other_rp, UP, &id, &[]),
            |error| matches!(error, WebAuthnError::WrongRpIdHash { .. }),
        ),
        (
            "credential id too long",
            registration_data(&device, UP, &long_id, &[]),
            |error| *error == WebAuthnError::CredentialIdLength(1024),
        ),
        (
            "empty credential id",
            registration_data(&device, UP, &[], &[]),
            |error| *error == WebAuthnError::CredentialIdLength(0),
        ),
        (
            "no attested data",
            device.authenticator_data(UP, 0),
            data_error,
        ),
        ("attested data without AT flag", no_at, data_error),
    ];
    for (name, data, expected) in cases {
        let object = attestation_object("none", Vec::new(), data);
        let error = parse_registration(
            &object,
            &create_data(),
            &expected_registration(&origins),
        )
        .unwrap_err();
        assert!(expected(&error), "{name}: {error}");
    }
}

#[test]
fn registration_checks_attestation_object() {
    let device = authenticator(Algorithm::Es256);
    let origins = origins();
    let data = registration_data(&device, UP, &device.credential_id, &[]);
    let valid = attestation_object("none", Vec::new(), data.clone());
    let mut extra_member =
        ciborium::de::from_reader::<Value, _>(valid.as_slice()).unwrap();
    if let Value::Map(entries) = &mut extra_member {
        entries.push(("extra".into(), Value::Integer(1.into())));
    }
    let mut repeated =
        ciborium::de::from_reader::<Value, _>(valid.as_slice()).unwrap();
    if let Value::Map(entries) = &mut repeated {
        entries.push(("fmt".into(), "none".into()));
    }
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("trailing byte", [valid.clone(), vec![0]].concat()),
        ("extra member", cbor(&extra_member)),
        ("repeated member", cbor(&repeated)),
        (
            "none with a statement",
            attestation_object(
                "none",
                vec![("alg".into(), Value::Integer((-7).into()))],
                data.clone(),
            ),
        ),
        (
            "tpm format",
            attestation_object("tpm", Vec::new(), data.clone()),
        ),
        (
            "packed without sig",
            attestation_object(
                "packed",
                vec![("alg".into(), Value::Integer((-7).into()))],
                data.clone(),
            ),
        ),
        ("not a map", cbor(&Value::Array(Vec::new()))),
    ];
    for (name, object) in cases {
        let error = parse_registration(
            &object,
            &create_data(),
            &expected_registration(&origins),
        )
        .unwrap_err();
        assert!(
            matches!(
                error,
                WebAuthnError::Attestation(_)
                    | WebAuthnError::UnsupportedAttestationFormat(_)
            ),
            "{name}: {error}"
        );
    }
}

#[test]
fn packed_self_attestation_is_verified() {
    for algorithm in [Algorithm::Es256, Algorithm::EdDsa] {
        let device = authenticator(algorithm);
        let origins = origins();
        let data = registration_data(&device, UP, &device.credential_id, &[]);
        let client = create_data();
        let signature = device.sign(&data, &client);
        let statement = |sig: Vec<u8>| {
            vec![
                ("alg".into(), Value::Integer(algorithm.cose().into())),
                ("sig".into(), Value::Bytes(sig)),
            ]
        };
        let object = attestation_object(
            "packed",
            statement(signature.clone()),
            data.clone(),
        );
        let registered = parse_registration(
            &object,
            &client,
            &expected_registration(&origins),
        )
        .unwrap();
        assert_eq!(registered.attestation_format, "packed");

        let mut bad = signature;
        bad[10] ^= 1;
        let object = attestation_object("packed", statement(bad), data);
        let error = parse_registration(
            &object,
            &client,
            &expected_registration(&origins),
        )
        .unwrap_err();
        assert!(matches!(error, WebAuthnError::Attestation(_)), "{error}");
    }
}

// Third-party authenticator: passkey-client and passkey-authenticator.

mod passkey {
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    use passkey_authenticator::{
        Authenticator, MemoryStore, UiHint, UserCheck, UserValidationMethod,
    };
    use passkey_client::{Client, DefaultClientData};
    use passkey_crypto::rust_crypto::RustCryptoBackend;
    use passkey_types::Passkey;
    use passkey_types::ctap2::{Aaguid, Ctap2Error};
    use passkey_types::webauthn::{
        CredentialCreationOptions, CredentialRequestOptions,
    };

    use super::*;

    /// A user who confirms every request with presence and verification.
    struct ConsentingUser;

    #[async_trait::async_trait]
    impl UserValidationMethod for ConsentingUser {
        type PasskeyItem = Passkey;

        async fn check_user<'a>(
            &self,
            _hint: UiHint<'a, Passkey>,
            presence: bool,
            verification: bool,
        ) -> Result<UserCheck, Ctap2Error> {
            Ok(UserCheck {
                presence,
                verification,
            })
        }

        fn is_presence_enabled(&self) -> bool {
            true
        }

        fn is_verification_enabled(&self) -> Option<bool> {
            Some(true)
        }
    }

    /// Runs a future that never waits on I/O, as the in-memory
    /// authenticator's do.
    fn block_on<F: Future>(future: F) -> F::Output {
        let mut future = pin!(future);
        let mut context = Context::from_waker(Waker::noop());
        loop {
            if let Poll::Ready(value) = future.as_mut().poll(&mut context) {
                return value;
            }
        }
    }

    /// Registers a credential with `algorithm` through passkey-client and
    /// makes an assertion over `challenge` with it.
    fn register_and_assert(
        algorithm: i64,
        challenge: [u8; 32],
    ) -> (RegisteredCredential, Assertion) {
        let authenticator = Authenticator::new(
            Aaguid::new_empty(),
            MemoryStore::new(),
            ConsentingUser,
            RustCryptoBackend,
        );
        let mut client = Client::new(authenticator);
        let origin = url::Url::parse(ORIGIN).unwrap();
        let creation: CredentialCreationOptions =
            serde_json::from_value(serde_json::json!({
                "publicKey": {
                    "rp": {"id": RP_ID, "name": "countersign"},
                    "user": {"id": "AAEC", "name": "phone", "displayName": "phone"},
                    "challenge": encode_base64url(&[9; 32]),
                    "pubKeyCredParams": [{"type": "public-key", "alg": algorithm}],
                    "authenticatorSelection": {"userVerification": "required"},
                    "attestation": "none"
                }
            }))
            .unwrap();
        let created =
            block_on(client.register(&origin, creation, DefaultClientData))
                .unwrap();
        let origins = origins();
        let registered = parse_registration(
            &created.response.attestation_object,
            &created.response.client_data_json,
            &expected_registration(&origins),
        )
        .unwrap();
        let request: CredentialRequestOptions =
            serde_json::from_value(serde_json::json!({
                "publicKey": {
                    "rpId": RP_ID,
                    "challenge": encode_base64url(&challenge),
                    "userVerification": "required",
                    "allowCredentials": [{"type": "public-key", "id": created.id}]
                }
            }))
            .unwrap();
        let response =
            block_on(client.authenticate(&origin, request, DefaultClientData))
                .unwrap();
        let assertion = Assertion {
            credential_id: response.raw_id.to_vec(),
            authenticator_data: response.response.authenticator_data.to_vec(),
            client_data_json: response.response.client_data_json.to_vec(),
            signature: response.response.signature.to_vec(),
        };
        (registered, assertion)
    }

    #[test]
    fn passkey_client_assertions_verify() {
        for (number, algorithm) in
            [(-7, Algorithm::Es256), (-8, Algorithm::EdDsa)]
        {
            let (registered, assertion) =
                register_and_assert(number, challenge());
            assert_eq!(registered.algorithm, algorithm);
            let credential = registered.credential().unwrap();
            let origins = origins();
            let expected = ExpectedAssertion {
                rp_id: RP_ID,
                origins: &origins,
                challenge: challenge(),
                require_user_verification: true,
            };
            let info = verify_assertion(&credential, &expected, &assertion)
                .unwrap_or_else(|error| panic!("{algorithm}: {error}"));
            assert!(info.flags.user_present());
            check_counter(registered.sign_count, info.sign_count).unwrap();

            let other = ExpectedAssertion {
                challenge: approval_challenge(b"statement 7", Verdict::Reject),
                ..expected
            };
            let error =
                verify_assertion(&credential, &other, &assertion).unwrap_err();
            assert!(
                matches!(error, WebAuthnError::WrongChallenge { .. }),
                "{error}"
            );
        }
    }
}

// Properties and arbitrary input.

mod properties {
    use proptest::prelude::*;

    use super::*;

    /// Which part of an assertion a mutation changes.
    #[derive(Debug, Clone, Copy)]
    enum Part {
        CredentialId,
        AuthenticatorData,
        ClientDataJson,
        Signature,
    }

    fn part(assertion: &mut Assertion, part: Part) -> &mut Vec<u8> {
        match part {
            Part::CredentialId => &mut assertion.credential_id,
            Part::AuthenticatorData => &mut assertion.authenticator_data,
            Part::ClientDataJson => &mut assertion.client_data_json,
            Part::Signature => &mut assertion.signature,
        }
    }

    fn any_part() -> impl Strategy<Value = Part> {
        prop_oneof![
            Just(Part::CredentialId),
            Just(Part::AuthenticatorData),
            Just(Part::ClientDataJson),
            Just(Part::Signature),
        ]
    }

    #[derive(Debug, Clone)]
    enum Mutation {
        Flip { index: usize, mask: u8 },
        Truncate { keep: usize },
        Append { bytes: Vec<u8> },
        Insert { index: usize, byte: u8 },
    }

    fn any_mutation() -> impl Strategy<Value = Mutation> {
        prop_oneof![
            (any::<usize>(), 1u8..=255)
                .prop_map(|(index, mask)| Mutation::Flip { index, mask }),
            any::<usize>().prop_map(|keep| Mutation::Truncate { keep }),
            proptest::collection::vec(any::<u8>(), 1..8)
                .prop_map(|bytes| Mutation::Append { bytes }),
            (any::<usize>(), any::<u8>())
                .prop_map(|(index, byte)| Mutation::Insert { index, byte }),
        ]
    }

    fn apply(bytes: &mut Vec<u8>, mutation: &Mutation) {
        match mutation {
            Mutation::Flip { .. } | Mutation::Truncate { .. }
                if bytes.is_empty() =>
            {
                bytes.push(0);
            }
            Mutation::Flip { index, mask } => {
                let index = index % bytes.len();
                bytes[index] ^= mask;
            }
            Mutation::Truncate { keep } => bytes.truncate(keep % bytes.len()),
            Mutation::Append { bytes: extra } => bytes.extend(extra),
            Mutation::Insert { index, byte } => {
                let index = index % (bytes.len() + 1);
                bytes.insert(index, *byte);
            }
        }
    }

    proptest! {
        #[test]
        fn mutated_assertion_never_verifies(
            algorithm in prop_oneof![Just(Algorithm::Es256), Just(Algorithm::EdDsa)],
            mutations in proptest::collection::vec((any_part(), any_mutation()), 1..4),
        ) {
            let mut device = authenticator(algorithm);
            let original = device.assert(challenge());
            let mut assertion = original.clone();
            for (which, mutation) in &mutations {
                apply(part(&mut assertion, *which), mutation);
            }
            prop_assume!(assertion != original);
            prop_assert!(verify(&device, &assertion).is_err());
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..600),
        ) {
            let device = authenticator(Algorithm::Es256);
            let origins = origins();
            let _ = AuthenticatorData::parse(&bytes);
            let _ = CredentialPublicKey::from_cose(&bytes, Algorithm::Es256);
            let _ = CredentialPublicKey::from_cose(&bytes, Algorithm::EdDsa);
            let _ = parse_registration(
                &bytes,
                &bytes,
                &expected_registration(&origins),
            );
            let assertion = Assertion {
                credential_id: device.credential_id.clone(),
                authenticator_data: bytes.clone(),
                client_data_json: bytes.clone(),
                signature: bytes.clone(),
            };
            prop_assert!(verify(&device, &assertion).is_err());
        }

        #[test]
        fn arbitrary_tails_never_panic(
            flags in any::<u8>(),
            tail in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            // A valid fixed part makes the parser reach the attested
            // data and extension parsing with arbitrary bytes.
            let device = authenticator(Algorithm::Es256);
            let mut data = device.authenticator_data(flags, 1);
            data.extend(&tail);
            let _ = AuthenticatorData::parse(&data);
            let origins = origins();
            let object = attestation_object("none", Vec::new(), data);
            let _ = parse_registration(
                &object,
                &create_data(),
                &expected_registration(&origins),
            );
        }

        #[test]
        fn arbitrary_client_data_never_verifies(
            text in "\\PC{0,200}",
        ) {
            let device = authenticator(Algorithm::Es256);
            let assertion = signed(
                &device,
                device.authenticator_data(UP, 1),
                text.into_bytes(),
            );
            prop_assert!(verify(&device, &assertion).is_err());
        }
    }
}
