//! `herald lint`: event names must be specific, past-tense facts.
//!
//! Each schema's top-level record name is an event name. Rules:
//! - `NOT_PASCAL_CASE`: names are PascalCase (`OrderCreated`).
//! - `VAGUE_NAME`: a single word (`Updated`, `Event`, `Process`), a filler suffix
//!   (`OrderEvent`, `PaymentData`) or a verb that only says something changed
//!   (`OrderUpdated`, `CartChanged`).
//! - `NOT_PAST_TENSE`: the last word is not a past participle (`ReserveInventory`,
//!   `OrderCreation`): events state what happened.

use std::path::{Path, PathBuf};

use clap::Args;
use herald_avro::registry::directory::{read_schema_file, scan};
use serde::Serialize;
use serde_json::json;

use crate::{Failure, Format, Outcome, print_finding};

#[derive(Debug, Args)]
pub(crate) struct LintArgs {
    /// Schema directories (`<subject>/v<N>.avsc`) or single .avsc files.
    #[arg(default_value = "schemas")]
    paths: Vec<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

#[derive(Debug, Serialize)]
struct Finding {
    file: String,
    name: String,
    rule: &'static str,
    message: String,
}

/// Words that name no fact on their own, or add nothing as a suffix.
const FILLER: &[&str] = &[
    "Event",
    "Events",
    "Message",
    "Msg",
    "Data",
    "Info",
    "Payload",
    "Dto",
    "Record",
    "Notification",
    "Object",
    "Item",
    "Thing",
    "Entity",
];
/// Past participles that say only that something changed.
const VAGUE_VERBS: &[&str] = &[
    "Updated", "Changed", "Modified", "Edited", "Altered", "Handled", "Happened", "Occurred",
    "Done", "Saved",
];
/// Words ending in `ed` that are not past tense.
const NOT_PAST: &[&str] = &[
    "Bed", "Breed", "Embed", "Exceed", "Feed", "Need", "Proceed", "Red", "Seed", "Shed", "Speed",
    "Succeed",
];
/// Irregular past participles.
const IRREGULAR: &[&str] = &[
    "Begun",
    "Bid",
    "Bound",
    "Bought",
    "Broadcast",
    "Broken",
    "Brought",
    "Built",
    "Cast",
    "Chosen",
    "Cut",
    "Dealt",
    "Drawn",
    "Driven",
    "Forbidden",
    "Forecast",
    "Forgotten",
    "Found",
    "Frozen",
    "Given",
    "Gone",
    "Grown",
    "Held",
    "Hidden",
    "Hit",
    "Kept",
    "Known",
    "Laid",
    "Left",
    "Lent",
    "Lost",
    "Made",
    "Met",
    "Paid",
    "Put",
    "Quit",
    "Read",
    "Rebuilt",
    "Resent",
    "Reset",
    "Resold",
    "Run",
    "Said",
    "Seen",
    "Sent",
    "Set",
    "Shown",
    "Shut",
    "Sold",
    "Spent",
    "Split",
    "Stolen",
    "Struck",
    "Stuck",
    "Taken",
    "Told",
    "Thrown",
    "Undone",
    "Upheld",
    "Withdrawn",
    "Withheld",
    "Won",
    "Written",
];

/// Splits PascalCase into words; runs of capitals stay together (`HTTPRequestSent` →
/// `HTTP`, `Request`, `Sent`).
fn words(name: &str) -> Vec<&str> {
    let cs: Vec<(usize, char)> = name.char_indices().collect();
    let mut starts = vec![0];
    for w in cs.windows(3) {
        let [(_, a), (i, b), (_, c)] = [w[0], w[1], w[2]];
        if b.is_uppercase() && (a.is_lowercase() || a.is_ascii_digit() || c.is_lowercase()) {
            starts.push(i);
        }
    }
    if let [.., (_, a), (i, b)] = cs[..]
        && b.is_uppercase()
        && a.is_lowercase()
    {
        starts.push(i);
    }
    starts.dedup();
    starts.push(name.len());
    starts
        .windows(2)
        .map(|w| &name[w[0]..w[1]])
        .filter(|w| !w.is_empty())
        .collect()
}

fn is_past(word: &str) -> bool {
    IRREGULAR.contains(&word)
        || (word.ends_with("ed") && word.len() > 3 && !NOT_PAST.contains(&word))
}

/// The findings for one event name.
fn lint_name(name: &str) -> Vec<(&'static str, String)> {
    let pascal = name.chars().next().is_some_and(|c| c.is_ascii_uppercase())
        && name.chars().all(|c| c.is_ascii_alphanumeric());
    if !pascal {
        return vec![(
            "NOT_PASCAL_CASE",
            format!("`{name}`: event names are PascalCase, e.g. `OrderCreated`"),
        )];
    }
    let ws = words(name);
    let last = ws.last().copied().unwrap_or(name);
    if ws.len() == 1 {
        return vec![(
            "VAGUE_NAME",
            format!("`{name}` names no entity: say what happened to what, e.g. `OrderCreated`"),
        )];
    }
    if FILLER.contains(&last) {
        return vec![(
            "VAGUE_NAME",
            format!(
                "`{name}`: the suffix `{last}` adds nothing; name the fact, e.g. `OrderShipped`"
            ),
        )];
    }
    if VAGUE_VERBS.contains(&last) {
        return vec![(
            "VAGUE_NAME",
            format!(
                "`{name}` says something changed, not what happened; name the business fact, e.g. `OrderAddressCorrected`"
            ),
        )];
    }
    if !is_past(last) {
        return vec![(
            "NOT_PAST_TENSE",
            format!(
                "`{name}` is not a past-tense fact (`{last}`); events say what happened, e.g. `InventoryReserved`"
            ),
        )];
    }
    Vec::new()
}

fn files(path: &Path) -> Result<Vec<PathBuf>, Failure> {
    if path.is_dir() {
        let subjects = scan(path).map_err(|e| Failure::Input(e.message().to_owned()))?;
        Ok(subjects
            .into_iter()
            .flat_map(|s| s.versions.into_iter().map(|(_, p)| p))
            .collect())
    } else {
        Ok(vec![path.to_path_buf()])
    }
}

pub(crate) fn run(args: &LintArgs) -> Outcome {
    let mut findings = Vec::new();
    let mut checked = 0;
    for path in &args.paths {
        for file in files(path)? {
            let schema =
                read_schema_file(&file).map_err(|e| Failure::Input(e.message().to_owned()))?;
            checked += 1;
            let Some(full) = schema.full_name() else {
                continue;
            };
            let name = full.rsplit('.').next().unwrap_or(&full).to_owned();
            for (rule, message) in lint_name(&name) {
                findings.push(Finding {
                    file: file.display().to_string(),
                    name: name.clone(),
                    rule,
                    message,
                });
            }
        }
    }
    if args.format == Format::Json {
        println!(
            "{}",
            json!({ "clean": findings.is_empty(), "findings": findings })
        );
    } else {
        for f in &findings {
            print_finding(args.format, &f.file, None, f.rule, &f.message);
        }
        match findings.len() {
            0 => eprintln!("lint: {checked} schemas, clean"),
            n => eprintln!("lint: {n} finding(s) in {checked} schemas"),
        }
    }
    Ok(findings.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_words() {
        assert_eq!(words("OrderCreated"), ["Order", "Created"]);
        assert_eq!(words("HTTPRequestSent"), ["HTTP", "Request", "Sent"]);
        assert_eq!(words("Updated"), ["Updated"]);
        assert_eq!(words("Payment2FAVerified"), ["Payment2", "FA", "Verified"]);
    }

    #[test]
    fn judges_names() {
        let rule = |n: &str| lint_name(n).first().map(|f| f.0);
        for good in [
            "OrderCreated",
            "PaymentProcessed",
            "InventoryReserved",
            "RefundPaid",
            "EmailSent",
        ] {
            assert_eq!(rule(good), None, "{good}");
        }
        assert_eq!(rule("Updated"), Some("VAGUE_NAME"));
        assert_eq!(rule("Event"), Some("VAGUE_NAME"));
        assert_eq!(rule("Process"), Some("VAGUE_NAME"));
        assert_eq!(rule("OrderEvent"), Some("VAGUE_NAME"));
        assert_eq!(rule("OrderUpdated"), Some("VAGUE_NAME"));
        assert_eq!(rule("ReserveInventory"), Some("NOT_PAST_TENSE"));
        assert_eq!(rule("ProcessPayment"), Some("NOT_PAST_TENSE"));
        assert_eq!(rule("OrderSpeed"), Some("NOT_PAST_TENSE"));
        assert_eq!(rule("order_created"), Some("NOT_PASCAL_CASE"));
    }
}
