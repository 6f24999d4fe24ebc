//! Seed reading and byte mutations shared by the fuzz tests of the
//! core, server and activator crates, which include this file with
//! `#[path]`. Seeds live in `fuzz/corpus/<target>/`. A seed whose name
//! starts with `valid-` must be accepted and every other seed must be
//! rejected. Files whose name ends in `.pub` are keys, not seeds.

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};

use proptest::prelude::*;

pub struct Seed {
    pub name: String,
    pub bytes: Vec<u8>,
}

impl Seed {
    pub fn valid(&self) -> bool {
        self.name.starts_with("valid-")
    }
}

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target)
}

/// Reads the seeds of `target`, sorted by file name.
pub fn corpus(target: &str) -> Vec<Seed> {
    let dir = corpus_dir(target);
    let mut seeds: Vec<Seed> = fs::read_dir(&dir)
        .unwrap_or_else(|error| panic!("reading {}: {error}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_none_or(|ext| ext != "pub"))
        .map(|path| Seed {
            name: path.file_name().unwrap().to_string_lossy().into_owned(),
            bytes: fs::read(&path).unwrap(),
        })
        .collect();
    seeds.sort_by(|a, b| a.name.cmp(&b.name));
    assert!(
        seeds.iter().any(Seed::valid),
        "no valid- seed in {}",
        dir.display()
    );
    seeds
}

/// Reads the file `name` of `target`'s corpus folder.
pub fn corpus_file(target: &str, name: &str) -> Vec<u8> {
    let path = corpus_dir(target).join(name);
    fs::read(&path)
        .unwrap_or_else(|error| panic!("reading {}: {error}", path.display()))
}

/// One edit of a byte string. Positions are taken modulo the length.
#[derive(Debug, Clone)]
pub enum Mutation {
    FlipBit(usize, u8),
    Replace(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    /// Copies up to 64 bytes of the input to another position, which
    /// repeats keys, brackets and tables.
    Splice(usize, usize, usize),
    Truncate(usize),
}

pub fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0u8..8)
            .prop_map(|(at, bit)| Mutation::FlipBit(at, bit)),
        (any::<usize>(), any::<u8>())
            .prop_map(|(at, byte)| Mutation::Replace(at, byte)),
        (any::<usize>(), any::<u8>())
            .prop_map(|(at, byte)| Mutation::Insert(at, byte)),
        any::<usize>().prop_map(Mutation::Delete),
        (any::<usize>(), 1usize..64, any::<usize>())
            .prop_map(|(from, len, to)| Mutation::Splice(from, len, to)),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

pub fn apply(bytes: &mut Vec<u8>, mutation: &Mutation) {
    if bytes.is_empty() {
        if let Mutation::Insert(_, byte) = mutation {
            bytes.push(*byte);
        }
        return;
    }
    let len = bytes.len();
    match *mutation {
        Mutation::FlipBit(at, bit) => bytes[at % len] ^= 1 << bit,
        Mutation::Replace(at, byte) => bytes[at % len] = byte,
        Mutation::Insert(at, byte) => bytes.insert(at % (len + 1), byte),
        Mutation::Delete(at) => {
            bytes.remove(at % len);
        }
        Mutation::Splice(from, span, to) => {
            let from = from % len;
            let end = (from + span).min(len);
            let piece = bytes[from..end].to_vec();
            let to = to % (len + 1);
            bytes.splice(to..to, piece);
        }
        Mutation::Truncate(at) => bytes.truncate(at % len),
    }
}

/// Generates a seed of `target` with one to seven mutations applied.
pub fn mutated(target: &str) -> impl Strategy<Value = Vec<u8>> {
    mutated_with_seed(target).prop_map(|(_, bytes)| bytes)
}

/// Generates a seed of `target` with one to seven mutations applied,
/// paired with the seed's index in [`corpus`].
pub fn mutated_with_seed(
    target: &str,
) -> impl Strategy<Value = (usize, Vec<u8>)> {
    let seeds: Vec<Vec<u8>> =
        corpus(target).into_iter().map(|seed| seed.bytes).collect();
    (0..seeds.len(), prop::collection::vec(mutation(), 1..8)).prop_map(
        move |(index, mutations)| {
            let mut bytes = seeds[index].clone();
            for mutation in &mutations {
                apply(&mut bytes, mutation);
            }
            (index, bytes)
        },
    )
}
