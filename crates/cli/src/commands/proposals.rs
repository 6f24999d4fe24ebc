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
/// its detail.
pub fn wait_until_built(client: &Client, number: u64) -> Result<Value> {
    loop {
        let detail: Value =
            client.get_json(&format!("/api/v1/proposals/{number}"))?;
        if detail["state"] != "building" {
            return Ok(detail);
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

pub fn status(client: &Client, json_output: bool) -> Result<()> {
    let status: Value = client.get_json("/api/v1/status")?;
    let list: Value = client.get_json("/api/v1/proposals")?;
    if json_output {
        let output =
            json!({ "status": status, "proposals": list["proposals"] });
        println!("{}", serde_json::to_string_pretty(&output)?);
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
        let commit = proposal["commit"].as_str().unwrap_or("");
        let age = proposal["created"]
            .as_i64()
            .map_or(String::new(), |created| format_duration(now - created));
        println!(
            "{:>5}  {:<18} {:<12} {:>9}  {} {}",
            proposal["number"],
            text(&proposal["state"]),
            format!(
                "{} of {}",
                proposal["quorum"]["have"], proposal["quorum"]["threshold"]
            ),
            age,
            &commit[..commit.len().min(12)],
            text(&proposal["subject"]),
        );
    }
    Ok(())
}

fn text(value: &Value) -> String {
    match value {
        Value::String(text) => sanitize(text),
        Value::Null => "unknown".into(),
        other => sanitize(&other.to_string()),
    }
}
