//! Property-based fuzzing of the parsers in core that read outside
//! input: statements, armored SSH signatures, activator request lines,
//! policy files and WebAuthn assertion parts.
//!
//! Every run replays the seed files under `fuzz/corpus/<target>/` and
//! then lets proptest mutate them. A seed whose name starts with
//! `valid-` must be accepted and every other seed must be rejected. Set
//! `PROPTEST_CASES` to run more mutations than the default 256 per
//! target.

#[path = "../../../fuzz/mutate.rs"]
mod mutate;

use countersign_core::Policy;
use countersign_core::protocol::Request;
use countersign_core::sshsig::{self, Namespace};
use countersign_core::statement::Statement;
use countersign_core::webauthn::testing::TestAuthenticator;
use countersign_core::webauthn::{
    Algorithm, Assertion, ExpectedAssertion, verify_assertion,
};
use mutate::{corpus, corpus_file, mutated_with_seed as mutated};
use proptest::prelude::*;

/// The message signed by the SSHSIG seeds, with `ssh-keygen -Y sign -n
/// countersign-approve`.
const SIGNED_MESSAGE: &[u8] = b"countersign fuzz seed";
/// The relying party, origin and challenge of the WebAuthn seeds.
const RP_ID: &str = "countersign.example.org";
const ORIGIN: &str = "https://countersign.example.org";
const CHALLENGE: [u8; 32] = [7; 32];

/// Checks what every accepted statement must satisfy: its bytes are the
/// canonical encoding of the parsed value.
fn check_statement(bytes: &[u8]) -> Option<Statement> {
    let statement = Statement::parse(bytes).ok()?;
    assert_eq!(
        statement.to_bytes(),
        bytes,
        "an accepted statement must be exactly its canonical encoding"
    );
    Some(statement)
}

#[test]
fn statement_corpus_replays() {
    for seed in corpus("statement") {
        let parsed = check_statement(&seed.bytes);
        assert_eq!(parsed.is_some(), seed.valid(), "seed {}", seed.name);
    }
}

fn approve_key(name: &str) -> ssh_key::PublicKey {
    let text = corpus_file("sshsig", name);
    ssh_key::PublicKey::from_openssh(std::str::from_utf8(&text).unwrap())
        .unwrap()
}

/// Returns the key that made a seed signature: `valid-ecdsa.sig` by `ecdsa.pub`,
/// every other seed by `ed25519.pub`.
fn key_for_seed(name: &str) -> ssh_key::PublicKey {
    if name.contains("ecdsa") {
        approve_key("ecdsa.pub")
    } else {
        approve_key("ed25519.pub")
    }
}

fn verify_approval(key: &ssh_key::PublicKey, armored: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(armored) else {
        return false;
    };
    sshsig::verify(key, Namespace::Approve, SIGNED_MESSAGE, text, false)
        .is_ok()
}

#[test]
fn sshsig_corpus_replays() {
    for seed in corpus("sshsig") {
        let key = key_for_seed(&seed.name);
        if let Ok(text) = std::str::from_utf8(&seed.bytes) {
            let _ = sshsig::parse(text);
        }
        assert_eq!(
            verify_approval(&key, &seed.bytes),
            seed.valid(),
            "seed {}",
            seed.name
        );
    }
}

#[test]
fn request_corpus_replays() {
    for seed in corpus("request") {
        let parsed = serde_json::from_slice::<Request>(&seed.bytes);
        // NOTE: serde ignores `deny_unknown_fields` for the unit variant
        // `status` of the internally tagged `Request`, so
        // `{"request":"status","extra":1}` is accepted. Seeds named
        // `gap-` record such inputs and are only checked for panics.
        if seed.name.starts_with("gap-") {
            continue;
        }
        assert_eq!(parsed.is_ok(), seed.valid(), "seed {}", seed.name);
    }
}

#[test]
fn policy_corpus_replays() {
    for seed in corpus("policy") {
        let parsed = Policy::from_toml(&seed.bytes);
        assert_eq!(
            parsed.is_ok(),
            seed.valid(),
            "seed {}: {:?}",
            seed.name,
            parsed.err()
        );
    }
}

fn authenticator() -> TestAuthenticator {
    TestAuthenticator::new(Algorithm::Es256, b"fuzz", RP_ID, ORIGIN)
}

fn valid_authenticator_data() -> Vec<u8> {
    let text = corpus_file("webauthn_authenticator_data", "valid-up-uv.hex");
    decode_hex(&text)
}

fn valid_client_data() -> Vec<u8> {
    corpus_file("webauthn_client_data", "valid-browser.json")
}

fn decode_hex(text: &[u8]) -> Vec<u8> {
    let text = std::str::from_utf8(text).unwrap().trim();
    (0..text.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(&text[at..at + 2], 16).unwrap())
        .collect()
}

/// Signs the two parts with the test authenticator's key, so that only
/// the parts themselves decide whether the assertion verifies.
fn verify_signed_parts(
    authenticator_data: Vec<u8>,
    client_data_json: Vec<u8>,
) -> bool {
    let authenticator = authenticator();
    let signature = authenticator.sign(&authenticator_data, &client_data_json);
    let credential = authenticator.credential();
    let origins = [ORIGIN.to_owned()];
    let expected = ExpectedAssertion {
        rp_id: RP_ID,
        origins: &origins,
        challenge: CHALLENGE,
        require_user_verification: false,
    };
    let assertion = Assertion {
        credential_id: credential.credential_id.clone(),
        authenticator_data,
        client_data_json,
        signature,
    };
    verify_assertion(&credential, &expected, &assertion).is_ok()
}

#[test]
fn webauthn_client_data_corpus_replays() {
    for seed in corpus("webauthn_client_data") {
        let verified = verify_signed_parts(
            valid_authenticator_data(),
            seed.bytes.clone(),
        );
        assert_eq!(verified, seed.valid(), "seed {}", seed.name);
    }
}

#[test]
fn webauthn_authenticator_data_corpus_replays() {
    for seed in corpus("webauthn_authenticator_data") {
        let verified =
            verify_signed_parts(decode_hex(&seed.bytes), valid_client_data());
        assert_eq!(verified, seed.valid(), "seed {}", seed.name);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::default())]

    #[test]
    fn fuzz_statement_mutations((index, bytes) in mutated("statement")) {
        let seed = &corpus("statement")[index];
        if let Some(statement) = check_statement(&bytes)
            && bytes != seed.bytes
            && let Ok(original) = Statement::parse(&seed.bytes)
        {
            prop_assert_ne!(statement, original);
        }
    }

    #[test]
    fn fuzz_sshsig_mutations((index, bytes) in mutated("sshsig")) {
        let seed = &corpus("sshsig")[index];
        if let Ok(text) = std::str::from_utf8(&bytes) {
            let _ = sshsig::parse(text);
        }
        let key = key_for_seed(&seed.name);
        // Armor whitespace and base64 padding bits may change without
        // changing the decoded signature, so only a mutation that changes
        // the decoded bytes must fail.
        let same_signature = match (
            std::str::from_utf8(&bytes).ok().and_then(|text| {
                sshsig::parse(text).ok()
            }),
            std::str::from_utf8(&seed.bytes).ok().and_then(|text| {
                sshsig::parse(text).ok()
            }),
        ) {
            (Some(mutated), Some(original)) => mutated == original,
            _ => false,
        };
        if !same_signature {
            prop_assert!(!verify_approval(&key, &bytes));
        }
    }

    #[test]
    fn fuzz_request_mutations((_index, bytes) in mutated("request")) {
        let _ = serde_json::from_slice::<Request>(&bytes);
    }

    #[test]
    fn fuzz_request_nesting(depth in 1usize..20_000, open in "[\\[{]") {
        let open = open.as_bytes()[0];
        let close = if open == b'[' { b']' } else { b'}' };
        let mut line = b"{\"request\":\"activate\",\"certificate\":".to_vec();
        line.extend(std::iter::repeat_n(open, depth));
        line.extend(std::iter::repeat_n(close, depth));
        line.push(b'}');
        prop_assert!(serde_json::from_slice::<Request>(&line).is_err());
    }

    #[test]
    fn fuzz_policy_mutations((_index, bytes) in mutated("policy")) {
        let _ = Policy::from_toml(&bytes);
    }

    #[test]
    fn fuzz_webauthn_client_data(
        (_index, bytes) in mutated("webauthn_client_data"),
    ) {
        let _ = verify_signed_parts(valid_authenticator_data(), bytes);
    }

    #[test]
    fn fuzz_webauthn_authenticator_data(
        (_index, bytes) in mutated("webauthn_authenticator_data"),
    ) {
        let seed_hex = bytes;
        let _ = verify_signed_parts(
            decode_hex_lossy(&seed_hex),
            valid_client_data(),
        );
    }
}

/// Decodes the hex digits of a mutated seed, skipping anything that is
/// not a pair of hex digits, so mutations reach the binary parser.
fn decode_hex_lossy(text: &[u8]) -> Vec<u8> {
    let digits: Vec<u8> = text
        .iter()
        .filter_map(|&byte| (byte as char).to_digit(16).map(|d| d as u8))
        .collect();
    digits
        .chunks_exact(2)
        .map(|pair| pair[0] << 4 | pair[1])
        .collect()
}
