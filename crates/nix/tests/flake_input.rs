//! A change that arrives only through a flake input: the repository's
//! `flake.nix` stays the same, `flake.lock` points the input at a new
//! revision, and the diff still finds what changed on the machine.

mod common;

use common::TestEnv;
use countersign_nix::diff::{AlertKind, DiffDocument, DiffInputs, Severity};
use countersign_nix::fixture::{self, FlakeInput};
use countersign_nix::{build, fetch_source, git};

#[test]
fn flake_input_change_is_caught() {
    let env = TestEnv::new();
    let input_dir = env.path("input");
    fixture::write_input_flake(
        &input_dir,
        &[("sshdExtra", "PermitRootLogin prohibit-password\n")],
        "Keys only for root",
    )
    .unwrap();

    let mut spec = env.demo();
    spec.input = Some(FlakeInput {
        name: "extra".to_owned(),
        url: format!("git+file://{}", input_dir.display()),
    });
    spec.edit_etc("ssh/sshd_config", |text| {
        text.replace(
            "PermitRootLogin prohibit-password\n",
            "@input:sshdExtra@",
        )
    });

    let build_commit = |message: &str| {
        let commit = fixture::commit_flake_locked(
            &env.nix,
            &env.repo(),
            &spec,
            message,
        )
        .expect("commit the locked flake");
        let fetched = git::fetch_branch(
            env.repo().to_str().unwrap(),
            "main",
            &env.mirror(),
        )
        .unwrap();
        assert_eq!(fetched, commit);
        let source = fetch_source(&env.nix, &env.mirror(), &commit).unwrap();
        let gc_root = env.path(&format!("result-{commit}"));
        let system =
            build(&env.nix, &source, &spec.attribute(), &gc_root, &mut |_| {})
                .expect("build with the locked input");
        (commit, system)
    };
    let (old_commit, old) = build_commit("Use the extra input");

    fixture::write_input_flake(
        &input_dir,
        &[("sshdExtra", "PermitRootLogin yes\n")],
        "Let root in with a password",
    )
    .unwrap();
    let (new_commit, new) = build_commit("Update the extra input");
    assert_ne!(old, new);

    let document = DiffDocument::compute(
        &env.nix,
        &DiffInputs {
            mirror: &env.mirror(),
            old_commit: Some(&old_commit),
            new_commit: &new_commit,
            old_system: Some(&old),
            new_system: &new,
        },
    )
    .unwrap();
    let source = document.source.as_ref().unwrap();
    let files: Vec<&str> =
        source.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(files, ["flake.lock"], "only the lock file changed");
    let alert = document
        .alerts
        .iter()
        .find(|a| a.kind == AlertKind::SshdSettingChanged)
        .expect("the sshd change is caught");
    assert_eq!(alert.severity, Severity::Critical);
    assert_eq!(alert.detail, "PermitRootLogin prohibit-password -> yes");
}
