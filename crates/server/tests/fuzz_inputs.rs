//! Property-based fuzzing of the server's outside inputs: the
//! configuration file and forge webhook payloads. Seeds come from
//! `fuzz/corpus/server_config/` and `fuzz/corpus/webhook/`. Set
//! `PROPTEST_CASES` to run more mutations than the default 256.

#[path = "../../../fuzz/mutate.rs"]
mod mutate;

use countersign_server::ServerConfig;
use mutate::{corpus, mutated};
use proptest::prelude::*;
use serde::Deserialize;

// NOTE: the webhook handler parses its payload with a private type
// inside an async handler, so these tests decode the same JSON shape
// with a copy of that type. Keep `Payload` equal to the one in
// `src/webhooks.rs`.
#[derive(Deserialize)]
#[allow(dead_code)]
struct Payload {
    #[serde(rename = "ref")]
    git_ref: Option<String>,
    repository: Option<Repository>,
    project: Option<Project>,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct Repository {
    full_name: Option<String>,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct Project {
    path_with_namespace: Option<String>,
}

/// Parses a payload the way the handler does and returns the pushed ref
/// and the repository name, both required for a push to count.
fn push_target(body: &[u8]) -> Option<(String, String)> {
    let payload: Payload = serde_json::from_slice(body).ok()?;
    let repository = payload
        .repository
        .and_then(|repository| repository.full_name)
        .or(payload
            .project
            .and_then(|project| project.path_with_namespace));
    Some((payload.git_ref?, repository?))
}

#[test]
fn server_config_corpus_replays() {
    for seed in corpus("server_config") {
        let text = std::str::from_utf8(&seed.bytes).unwrap();
        let parsed = ServerConfig::parse(text);
        assert_eq!(
            parsed.is_ok(),
            seed.valid(),
            "seed {}: {:?}",
            seed.name,
            parsed.err()
        );
    }
}

#[test]
fn webhook_corpus_replays() {
    for seed in corpus("webhook") {
        let parsed = serde_json::from_slice::<Payload>(&seed.bytes);
        assert_eq!(parsed.is_ok(), seed.valid(), "seed {}", seed.name);
    }
}

#[test]
fn webhook_push_seeds_name_repository() {
    for seed in corpus("webhook") {
        if seed.valid() && seed.name.ends_with("-push.json") {
            let target = push_target(&seed.bytes);
            assert_eq!(
                target,
                Some(("refs/heads/main".to_owned(), "ops/infra".to_owned())),
                "seed {}",
                seed.name
            );
        }
    }
}

proptest! {
    #[test]
    fn fuzz_server_config_mutations(bytes in mutated("server_config")) {
        if let Ok(text) = std::str::from_utf8(&bytes) {
            let _ = ServerConfig::parse(text);
        }
    }

    #[test]
    fn fuzz_webhook_mutations(bytes in mutated("webhook")) {
        let _ = push_target(&bytes);
    }

    #[test]
    fn fuzz_webhook_nesting(depth in 1usize..20_000) {
        let mut body = b"{\"ref\":\"refs/heads/main\",\"repository\":".to_vec();
        body.extend(std::iter::repeat_n(b'[', depth));
        body.extend(std::iter::repeat_n(b']', depth));
        body.push(b'}');
        prop_assert!(push_target(&body).is_none());
    }
}
