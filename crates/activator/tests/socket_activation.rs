//! Socket activation: the activator serves on a listening socket that
//! it receives as descriptor 3, as systemd passes it, and leaves the
//! socket file, its mode and its group as the socket unit made them.

mod support;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use countersign_core::protocol::Event;
use support::{Activator, World, WorldOptions};

#[test]
fn activated_socket_serves_status() {
    let world = World::build(WorldOptions::default());
    // The configured mode is 0660, so a mode of 0600 that survives shows
    // that the activator did not set the mode itself.
    let activator = Activator::start_socket_activated(
        &world,
        "socket_mode = \"0660\"",
        0o600,
    );
    let before = fs::metadata(&activator.socket).unwrap();

    let events = activator.request(b"{\"request\":\"status\"}\n");
    assert!(
        matches!(events.last(), Some(Event::Status { .. })),
        "expected a status event, got {events:?}"
    );

    let after = fs::metadata(&activator.socket).unwrap();
    assert_eq!(
        after.ino(),
        before.ino(),
        "the activator replaced the socket file"
    );
    assert_eq!(after.permissions().mode() & 0o777, 0o600);
    let log = activator.log();
    assert!(
        log.contains("socket_source") && log.contains("\"systemd\""),
        "the log does not name socket activation:\n{log}"
    );
    let leftovers: Vec<_> = fs::read_dir(activator.socket.parent().unwrap())
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "unexpected files: {leftovers:?}");
}
