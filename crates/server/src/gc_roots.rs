//! Releasing the GC roots of built proposals.
//!
//! Each build links its system as `<state_dir>/gcroots/<proposal>`, an
//! indirect root that keeps Nix from collecting the system while
//! approvers review it. A proposal that can no longer be deployed
//! (rejected, expired, superseded, failed, refused or rolled back) does
//! not need its system any more, and a kept root per push would let the
//! store grow without bound.

use std::collections::BTreeSet;
use std::path::Path;

use crate::db::{self, DbResult, ProposalState};
use crate::state::AppState;

/// Proposals whose system may still be deployed or is being deployed.
const LIVE_STATES: [ProposalState; 3] = [
    ProposalState::Building,
    ProposalState::AwaitingApproval,
    ProposalState::Activating,
];

/// Removes the roots of proposals that are neither live nor the last
/// deployed one, and returns their numbers. On NixOS the system profile
/// keeps deployed systems alive. The last deployed root stays too, so
/// the running system is kept where the profile is no GC root.
pub(crate) async fn release(state: &AppState) -> DbResult<Vec<u64>> {
    let folder = state.state_dir().join("gcroots");
    state
        .db
        .run(move |connection| {
            let mut keep = BTreeSet::new();
            for live in LIVE_STATES {
                keep.extend(db::numbers_in_state(connection, live)?);
            }
            let deployed =
                db::numbers_in_state(connection, ProposalState::Deployed)?;
            keep.extend(deployed.last());
            Ok(remove_roots_except(&folder, &keep))
        })
        .await
}

/// Removes the links in `folder` named by a proposal number outside
/// `keep`. Other entries stay. Errors are logged, since the next round
/// tries again.
fn remove_roots_except(folder: &Path, keep: &BTreeSet<u64>) -> Vec<u64> {
    let entries = match std::fs::read_dir(folder) {
        Ok(entries) => entries,
        Err(error) => {
            tracing::warn!(
                folder = %folder.display(),
                %error,
                "cannot list the GC roots of proposals"
            );
            return Vec::new();
        }
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let Some(number) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<u64>().ok())
        else {
            continue;
        };
        if keep.contains(&number) {
            continue;
        }
        let is_link = entry
            .file_type()
            .is_ok_and(|file_type| file_type.is_symlink());
        if !is_link {
            continue;
        }
        match std::fs::remove_file(entry.path()) {
            Ok(()) => removed.push(number),
            Err(error) => tracing::warn!(
                proposal = number,
                path = %entry.path().display(),
                %error,
                "cannot remove the GC root of a proposal"
            ),
        }
    }
    removed.sort_unstable();
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_links_stay() {
        let folder = tempfile::tempdir().unwrap();
        for name in ["1", "2", "3", "notes"] {
            std::os::unix::fs::symlink(
                "/nix/store/x",
                folder.path().join(name),
            )
            .unwrap();
        }
        std::fs::create_dir(folder.path().join("4")).unwrap();
        let keep = BTreeSet::from([2]);
        assert_eq!(remove_roots_except(folder.path(), &keep), [1, 3]);
        for name in ["2", "notes", "4"] {
            assert!(
                folder.path().join(name).symlink_metadata().is_ok(),
                "{name} stays"
            );
        }
        assert!(folder.path().join("1").symlink_metadata().is_err());
    }
}
