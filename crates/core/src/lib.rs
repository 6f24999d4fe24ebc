//! The trust rules of countersign, free of I/O: what a statement says,
//! what a policy demands, whether a set of signatures meets it, and how
//! the audit chain links its entries.
//!
//! Both the network-facing server and the privileged activator use this
//! crate, so the activator's decision depends only on these pure
//! functions and on what it reads from its own machine.

pub mod audit;
pub mod certificate;
pub mod digest;
pub mod policy;
pub mod protocol;
pub mod sshsig;
pub mod statement;
pub mod store_path;
pub mod webauthn;

#[cfg(test)]
mod test_keys;

pub use certificate::{
    Certificate, CertificateError, SignCounter, Verdict, VerifiedCertificate,
    VerifiedVote, Vote, VoteSignature, verify_certificate, verify_vote,
    verify_vote_detailed,
};
pub use digest::Sha256Digest;
pub use policy::{
    Approver, ApproverKey, ApproverName, Policy, PolicyError, WebAuthnSettings,
};
pub use statement::{Action, STATEMENT_FORMAT, Source, Statement};
pub use store_path::{StorePath, StorePathError};
