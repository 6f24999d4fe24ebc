//! `countersign audit verify`: replays the server's hash-chained audit
//! log, requires it to contain the head that the activator recorded (so
//! a log whose tail was cut fails), and checks the activator's history.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use countersign_core::audit::Anchor;
use countersign_core::protocol::{AuditHead, Event, Request};

pub fn verify(
    server_config: &Path,
    activator_config: Option<&Path>,
) -> Result<()> {
    let config = countersign_server::ServerConfig::load(server_config)?;
    let database = config.state_dir.join(countersign_server::DB_FILE);
    let head = match activator_config {
        Some(path) => {
            let activator = countersign_activator::Config::load(path)?;
            let state =
                countersign_activator::read_state(&activator.state_dir)?;
            let summary =
                countersign_activator::verify_history(&activator.state_dir)
                    .context("the activator's history is invalid")?;
            println!(
                "activator history: {} entries, last accepted proposal {}, \
                 chain intact",
                summary.entries, summary.last_proposal
            );
            check_every_recorded_head(&activator.state_dir, &database)?;
            state.audit_head
        }
        None => activator_head(&config.activator_socket)?,
    };
    let anchor = head.map(|head: AuditHead| Anchor {
        seq: head.seq,
        hash: head.hash,
    });
    let summary = countersign_server::verify_audit(&database, anchor)
        .context("the audit log is invalid")?;
    match anchor {
        Some(anchor) => println!(
            "audit log: {} entries, chain intact, contains entry {} \
             recorded by the activator",
            summary.entries, anchor.seq
        ),
        None => println!(
            "audit log: {} entries, chain intact; the activator has \
             recorded no entry yet",
            summary.entries
        ),
    }
    Ok(())
}

/// Requires the server's log to contain the audit head recorded with
/// every proposal the activator accepted, and those heads to increase,
/// so that neither a cut tail nor a server that sent a lower or missing
/// head hides an activation.
// NOTE: entries written after the last accepted activation (its outcome,
// later proposals and votes) are anchored nowhere yet, so a cut of only
// those entries still verifies.
fn check_every_recorded_head(state_dir: &Path, database: &Path) -> Result<()> {
    let mut previous: Option<AuditHead> = None;
    for entry in countersign_activator::read_history(state_dir)? {
        let countersign_activator::HistoryRecord::Accepted {
            proposal,
            audit_head,
            ..
        } = entry.record
        else {
            continue;
        };
        let Some(head) = audit_head else {
            bail!(
                "the activator accepted proposal {proposal} without an audit \
                 head, so the server's log cannot be checked against it"
            );
        };
        if let Some(previous) = previous
            && head.seq < previous.seq
        {
            bail!(
                "the audit head recorded with proposal {proposal} (entry {}) \
                 is older than an earlier one (entry {}); the server's log \
                 was rewritten",
                head.seq,
                previous.seq
            );
        }
        let anchor = Anchor {
            seq: head.seq,
            hash: head.hash,
        };
        countersign_server::verify_audit(database, Some(anchor))
            .with_context(|| {
                format!(
                    "the audit log lacks entry {} recorded when proposal \
                     {proposal} was accepted",
                    head.seq
                )
            })?;
        previous = Some(head);
    }
    Ok(())
}

/// Asks the running activator for the audit head it recorded.
fn activator_head(socket: &Path) -> Result<Option<AuditHead>> {
    let mut stream = UnixStream::connect(socket).with_context(|| {
        format!(
            "failed to connect to the activator at {}; pass \
             --activator-config to read its state directly",
            socket.display()
        )
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut line = serde_json::to_vec(&Request::Status)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut reader = BufReader::new(stream);
    let mut answer = String::new();
    reader.read_line(&mut answer)?;
    match serde_json::from_str::<Event>(&answer)
        .context("the activator's answer is not a valid event")?
    {
        Event::Status { audit_head, .. } => Ok(audit_head),
        other => bail!("the activator answered {other:?} to a status request"),
    }
}
