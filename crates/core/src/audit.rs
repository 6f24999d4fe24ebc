//! The audit chain: each entry's hash covers its number, the previous
//! entry's hash and its own bytes, so that changing, removing or
//! reordering any entry breaks every hash after it.
//!
//! Storage is the caller's; this module only computes and checks hashes.
//! A cut tail leaves a valid shorter chain, which is why the activator
//! keeps an anchor (the number and hash of an entry it has seen) that a
//! verification must find.

use crate::Sha256Digest;

const DOMAIN: &[u8] = b"countersign-audit-v1\0";

/// The hash of entry `seq` (numbered from 1) with body `body`.
pub fn entry_hash(seq: u64, prev: &Sha256Digest, body: &[u8]) -> Sha256Digest {
    Sha256Digest::of_parts(&[
        DOMAIN,
        &seq.to_be_bytes(),
        prev.as_bytes(),
        body,
    ])
}

/// One stored entry, as read back for verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEntry {
    pub seq: u64,
    pub prev: Sha256Digest,
    pub body: Vec<u8>,
    pub hash: Sha256Digest,
}

/// A position in a chain that a verification must find unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Anchor {
    pub seq: u64,
    pub hash: Sha256Digest,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditError {
    #[error(
        "entry {found} follows entry {previous}; the log has a gap or is out of order"
    )]
    Gap { previous: u64, found: u64 },
    #[error("entry {0} does not link to the hash of the entry before it")]
    BrokenLink(u64),
    #[error("entry {0} does not match its stored hash; it was altered")]
    Altered(u64),
    #[error(
        "the log ends at entry {last}, but entry {anchor} was recorded; its tail was cut"
    )]
    Truncated { last: u64, anchor: u64 },
    #[error("entry {0} differs from the one recorded when it was written")]
    AnchorMismatch(u64),
}

/// Checks a whole chain, in order from entry 1, and that it contains
/// `anchor` when one is given. Returns the last entry's position.
pub fn verify_chain<I>(
    entries: I,
    anchor: Option<Anchor>,
) -> Result<Option<Anchor>, AuditError>
where
    I: IntoIterator<Item = StoredEntry>,
{
    let mut last: Option<Anchor> = None;
    let mut anchor_seen = false;
    for entry in entries {
        let (expected_seq, expected_prev) = match last {
            Some(last) => (last.seq + 1, last.hash),
            None => (1, Sha256Digest::ZERO),
        };
        if entry.seq != expected_seq {
            return Err(AuditError::Gap {
                previous: expected_seq - 1,
                found: entry.seq,
            });
        }
        if entry.prev != expected_prev {
            return Err(AuditError::BrokenLink(entry.seq));
        }
        if entry_hash(entry.seq, &entry.prev, &entry.body) != entry.hash {
            return Err(AuditError::Altered(entry.seq));
        }
        if let Some(anchor) = anchor
            && anchor.seq == entry.seq
        {
            if anchor.hash != entry.hash {
                return Err(AuditError::AnchorMismatch(entry.seq));
            }
            anchor_seen = true;
        }
        last = Some(Anchor {
            seq: entry.seq,
            hash: entry.hash,
        });
    }
    if let Some(anchor) = anchor
        && !anchor_seen
    {
        return Err(AuditError::Truncated {
            last: last.map_or(0, |last| last.seq),
            anchor: anchor.seq,
        });
    }
    Ok(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(bodies: &[&str]) -> Vec<StoredEntry> {
        let mut prev = Sha256Digest::ZERO;
        let mut entries = Vec::new();
        for (index, body) in bodies.iter().enumerate() {
            let seq = index as u64 + 1;
            let hash = entry_hash(seq, &prev, body.as_bytes());
            entries.push(StoredEntry {
                seq,
                prev,
                body: body.as_bytes().to_vec(),
                hash,
            });
            prev = hash;
        }
        entries
    }

    #[test]
    fn intact_chain_verifies() {
        let entries = chain(&["a", "b", "c"]);
        let anchor = Anchor {
            seq: 2,
            hash: entries[1].hash,
        };
        let last = verify_chain(entries, Some(anchor)).unwrap().unwrap();
        assert_eq!(last.seq, 3);
    }

    #[test]
    fn altered_body_fails() {
        let mut entries = chain(&["a", "b", "c"]);
        entries[1].body = b"B".to_vec();
        assert_eq!(verify_chain(entries, None), Err(AuditError::Altered(2)));
    }

    #[test]
    fn removed_entry_fails() {
        let mut entries = chain(&["a", "b", "c"]);
        entries.remove(1);
        assert!(matches!(
            verify_chain(entries, None),
            Err(AuditError::Gap { .. })
        ));
    }

    #[test]
    fn cut_tail_fails_against_anchor() {
        let mut entries = chain(&["a", "b", "c"]);
        let anchor = Anchor {
            seq: 3,
            hash: entries[2].hash,
        };
        entries.pop();
        assert_eq!(
            verify_chain(entries, Some(anchor)),
            Err(AuditError::Truncated { last: 2, anchor: 3 })
        );
    }

    #[test]
    fn rewritten_chain_fails_against_anchor() {
        let original = chain(&["a", "b"]);
        let rewritten = chain(&["a", "x"]);
        let anchor = Anchor {
            seq: 2,
            hash: original[1].hash,
        };
        assert_eq!(
            verify_chain(rewritten, Some(anchor)),
            Err(AuditError::AnchorMismatch(2))
        );
    }
}
