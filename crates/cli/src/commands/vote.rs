//! `countersign show`, `approve` and `reject`: fetch a proposal, check
//! that the diff is the one the statement names, show it, and sign the
//! statement's exact bytes.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use countersign_core::sshsig::Namespace;
use countersign_core::{Sha256Digest, Statement};
use countersign_nix::diff::{DiffDocument, render_text};
use serde_json::{Value, json};

use crate::client::Client;
use crate::sign;
use crate::terminal::{format_duration, sanitize};

/// A proposal as fetched and checked on this device.
pub struct Reviewed {
    pub detail: Value,
    pub statement_bytes: Vec<u8>,
    pub statement: Statement,
    pub diff: DiffDocument,
}

/// Fetches proposal `number` and checks, on this device, that the
/// statement parses strictly, is for that proposal, and names the diff
/// that the server shows.
pub fn review(client: &Client, number: u64) -> Result<Reviewed> {
    let detail: Value =
        client.get_json(&format!("/api/v1/proposals/{number}"))?;
    let statement_bytes =
        client.get_bytes(&format!("/api/v1/proposals/{number}/statement"))?;
    let statement = Statement::parse(&statement_bytes).with_context(|| {
        format!("the statement of proposal {number} is invalid")
    })?;
    if statement.proposal != number {
        bail!(
            "the server sent the statement of proposal {} for proposal \
             {number}; do not sign it",
            statement.proposal
        );
    }
    let diff_bytes =
        client.get_bytes(&format!("/api/v1/proposals/{number}/diff"))?;
    if Sha256Digest::of(&diff_bytes) != statement.diff_sha256 {
        bail!(
            "the diff of proposal {number} does not match the SHA-256 in its \
             statement; the server shows something other than what would be \
             signed, so do not sign it"
        );
    }
    let diff: DiffDocument = serde_json::from_slice(&diff_bytes)
        .context("the diff document is not valid JSON")?;
    Ok(Reviewed {
        detail,
        statement_bytes,
        statement,
        diff,
    })
}

/// Prints what an approver signs: the statement's own fields, then the
/// server's summary, then the diff.
pub fn print_summary(reviewed: &Reviewed, full_diff: bool) {
    let statement = &reviewed.statement;
    let detail = &reviewed.detail;
    let now = unix_now();
    println!(
        "Proposal {} for host {} ({})",
        statement.proposal,
        sanitize(&statement.host),
        sanitize(detail["state"].as_str().unwrap_or("unknown state"))
    );
    match (&statement.source, statement.rollback_generation) {
        (Some(source), _) => println!(
            "  source   {} {} @ {}",
            sanitize(&source.repository),
            sanitize(&source.branch),
            source.commit
        ),
        (None, Some(generation)) => println!(
            "  rollback to generation {generation} of the system profile, \
             built before; no source"
        ),
        (None, None) => println!("  source   none"),
    }
    if let Some(subject) = detail["subject"].as_str() {
        println!("  commit   {}", sanitize(subject));
    }
    if let Some(source) = &statement.source {
        println!("  flake    {}", sanitize(&statement.attribute));
        // The activator requires the source with this hash to be the
        // commit's git tree, so the commit above is what is deployed.
        println!("  nar hash {}", sanitize(&source.nar_hash));
    }
    println!("  action   {}", statement.action);
    println!("  base     {}", statement.base);
    println!("  target   {}", statement.target);
    println!(
        "  expires  in {}",
        format_duration(statement.expires as i64 - now as i64)
    );
    println!("  digest   {}", statement.digest());
    if let Some(quorum) = detail.get("quorum") {
        println!("  quorum   {} of {}", quorum["have"], quorum["threshold"]);
    }
    println!();
    let text = render_text(&reviewed.diff);
    if full_diff {
        print!("{text}");
    } else {
        for line in text.lines().take(60) {
            println!("{line}");
        }
        if text.lines().count() > 60 {
            println!(
                "… (run `countersign show {}` for the whole diff)",
                statement.proposal
            );
        }
    }
}

pub fn show(client: &Client, number: u64, json_output: bool) -> Result<()> {
    let reviewed = review(client, number)?;
    if json_output {
        let output = json!({
            "proposal": reviewed.detail,
            "statement": reviewed.statement,
            "diff": reviewed.diff,
        });
        crate::terminal::print_json(&output)?;
    } else {
        print_summary(&reviewed, true);
    }
    Ok(())
}

pub struct VoteOptions<'a> {
    pub number: u64,
    pub key: &'a Path,
    pub approve: bool,
    pub reason: Option<String>,
    pub yes: bool,
}

pub fn vote(client: &Client, options: VoteOptions<'_>) -> Result<()> {
    let reviewed = review(client, options.number)?;
    print_summary(&reviewed, false);
    let verb = if options.approve { "Approve" } else { "Reject" };
    if !options.yes {
        confirm(&format!(
            "{verb} proposal {} (target {})?",
            options.number, reviewed.statement.target
        ))?;
    }
    let namespace = if options.approve {
        Namespace::Approve
    } else {
        Namespace::Reject
    };
    let signature =
        sign::sign(options.key, namespace, &reviewed.statement_bytes)?;
    let (path, body) = if options.approve {
        ("approvals", json!({ "signature": signature }))
    } else {
        (
            "rejections",
            json!({ "signature": signature, "reason": options.reason }),
        )
    };
    let detail: Value = client.post_json(
        &format!("/api/v1/proposals/{}/{path}", options.number),
        &body,
    )?;
    let state = detail["state"].as_str().unwrap_or("unknown");
    println!(
        "{} recorded; proposal {} is {} ({} of {} approvals)",
        if options.approve {
            "Approval"
        } else {
            "Rejection"
        },
        options.number,
        sanitize(state),
        detail["quorum"]["have"],
        detail["quorum"]["threshold"],
    );
    Ok(())
}

fn confirm(question: &str) -> Result<()> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        bail!(
            "no terminal to confirm on; review with `countersign show` and pass --yes"
        );
    }
    print!("{question} [y/N] ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer)?;
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        bail!("cancelled; nothing was signed")
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |duration| duration.as_secs())
}
