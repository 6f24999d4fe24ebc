//! Property-based fuzzing of the activator's configuration parser with
//! seeds from `fuzz/corpus/activator_config/`. Set `PROPTEST_CASES` to
//! run more mutations than the default 256.

#[path = "../../../fuzz/mutate.rs"]
mod mutate;

use countersign_activator::Config;
use mutate::{corpus, mutated};
use proptest::prelude::*;

#[test]
fn activator_config_corpus_replays() {
    for seed in corpus("activator_config") {
        let text = std::str::from_utf8(&seed.bytes).unwrap();
        let parsed = Config::parse(text);
        assert_eq!(
            parsed.is_ok(),
            seed.valid(),
            "seed {}: {:?}",
            seed.name,
            parsed.err()
        );
    }
}

proptest! {
    #[test]
    fn fuzz_activator_config_mutations(
        bytes in mutated("activator_config"),
    ) {
        if let Ok(text) = std::str::from_utf8(&bytes) {
            let _ = Config::parse(text);
        }
    }
}
