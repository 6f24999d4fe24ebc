//! `countersign propose` and `countersign status`.

use anyhow::Result;
use serde_json::{Value, json};

use crate::client::Client;
use crate::commands::vote::unix_now;
use crate::terminal::{format_duration, sanitize};

/// Creates a proposal of `rev`, or of a rollback to generation
/// `rollback` of the system profile, and prints its number.
pub fn propose(
    client: &Client,
    rev: Option<String>,
    rollback: Option<u64>,
) -> Result<u64> {
    let body = match rollback {
        Some(generation) => json!({ "rollback_generation": generation }),
        None => json!({ "rev": rev }),
    };
    let created: Value = client.post_json("/api/v1/proposals", &body)?;
    let number = created["proposal"].as_u64().ok_or_else(|| {
        anyhow::anyhow!("the server did not return a proposal number")
    })?;
    println!("{number}");
    Ok(number)
}

/// Waits until proposal `number` leaves the `building` state and returns
/// its detail. The client logs in again before its session expires, so
/// the wait lasts as long as the build.
pub fn wait_until_built(client: &mut Client, number: u64) -> Result<Value> {
    loop {
        client.renew_if_expiring()?;
        let detail: Value =
            client.get_json(&format!("/api/v1/proposals/{number}"))?;
        if detail["state"] != "building" {
            return Ok(detail);
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

pub fn status(client: &Client, json_output: bool) -> Result<()> {
    let status: Value = client.get_json("/api/v1/status")?;
    let list: Value = client.get_json("/api/v1/proposals")?;
    if json_output {
        let output =
            json!({ "status": status, "proposals": list["proposals"] });
        crate::terminal::print_json(&output)?;
        return Ok(());
    }
    println!("host            {}", text(&status["host"]));
    println!("running system  {}", text(&status["current_system"]));
    println!("deployed commit {}", text(&status["deployed_commit"]));
    println!();
    let proposals = list["proposals"].as_array().cloned().unwrap_or_default();
    if proposals.is_empty() {
        println!("no proposals yet");
        return Ok(());
    }
    println!(
        "{:>5}  {:<18} {:<12} {:>9}  commit",
        "#", "state", "approvals", "age"
    );
    let now = unix_now() as i64;
    for proposal in proposals.iter().take(20) {
        println!("{}", status_row(proposal, now));
    }
    Ok(())
}

/// Formats one entry of the proposal list as a row under the header that
/// `status` prints. `now` is the current Unix time in seconds.
fn status_row(proposal: &Value, now: i64) -> String {
    let number = proposal["number"]
        .as_u64()
        .map_or_else(|| "?".to_owned(), |number| number.to_string());
    let approvals = match (
        proposal["quorum"]["have"].as_u64(),
        proposal["quorum"]["threshold"].as_u64(),
    ) {
        (Some(have), Some(threshold)) => format!("{have} of {threshold}"),
        _ => "unknown".to_owned(),
    };
    let commit = proposal["commit"].as_str().unwrap_or("");
    let age = proposal["created"]
        .as_i64()
        .map_or(String::new(), |created| format_duration(now - created));
    format!(
        "{:>5}  {:<18} {:<12} {:>9}  {} {}",
        number,
        text(&proposal["state"]),
        approvals,
        age,
        &commit[..commit.len().min(12)],
        text(&proposal["subject"]),
    )
}

fn text(value: &Value) -> String {
    match value {
        Value::String(text) => sanitize(text),
        Value::Null => "unknown".into(),
        other => sanitize(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_row_aligns_number_and_quorum() {
        let proposal = json!({
            "number": 7,
            "state": "awaiting-approval",
            "quorum": { "have": 1, "threshold": 2 },
            "commit": "0123456789abcdef",
            "created": 100,
            "subject": "Update hello",
        });
        let row = status_row(&proposal, 160);
        assert!(
            row.starts_with("    7  awaiting-approval  1 of 2 "),
            "{row}"
        );
        assert!(row.ends_with("  0123456789ab Update hello"), "{row}");
    }

    #[test]
    fn status_row_without_quorum() {
        let proposal = json!({ "number": 12, "state": "building" });
        let row = status_row(&proposal, 0);
        assert!(row.starts_with("   12  building"), "{row}");
        assert!(row.contains("unknown"), "{row}");
        assert!(!row.contains("null"), "{row}");
    }
}
