//! `herald`: the herald command line.
//!
//! ```text
//! herald schema check NEW.avsc --against OLD.avsc [--against …] --mode MODE [--format text|json|github]
//! herald schema check --dir schemas/ [--format …]
//! herald schema register --registry URL --subject S FILE
//! herald schema diff OLD.avsc NEW.avsc
//! herald lint schemas/
//! herald dlq list    --transport kafka|nats TOPIC [--format text|json]
//! herald dlq inspect --transport kafka|nats TOPIC [--id ID]… [--limit N] [--format text|json] [--schemas DIR]
//! herald dlq replay  --transport kafka|nats TOPIC [--to TOPIC] [--id ID]… [--error-contains S] [--since T] [--rate N/s] [--dry-run]
//! ```
//!
//! Exit codes, the same for every subcommand: `0` success, `100` findings (incompatible
//! schemas, lint findings), `2` invalid input (unreadable or invalid files, bad arguments —
//! clap's usage errors included), `1` anything else (e.g. a registry that cannot be reached).

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

mod dlq;
mod lint;
mod schema;

/// Tools for herald services: Avro schema checks and registration, event-name lint.
#[derive(Debug, Parser)]
#[command(name = "herald", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Avro schemas: compatibility checks, registration, diffs.
    #[command(subcommand)]
    Schema(schema::SchemaCommand),
    /// Check that event names are specific, past-tense facts.
    Lint(lint::LintArgs),
    /// Dead-letter topics on Kafka and NATS: list, inspect, replay.
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
    // New subcommands go here, each dispatching to its own module.
}

/// How findings are printed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    /// One line per finding: `file: path: RULE: message`.
    #[default]
    Text,
    /// One JSON document on stdout.
    Json,
    /// GitHub Actions `::error` workflow commands.
    Github,
}

/// Why a command could not do its job.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Bad input: exit 2.
    Input(String),
    /// Anything else: exit 1.
    Runtime(String),
}

/// `Ok(true)`: clean (exit 0); `Ok(false)`: findings were printed (exit 100).
pub(crate) type Outcome = Result<bool, Failure>;

/// Prints one finding in `text` or `github` form (JSON is each command's own document).
pub(crate) fn print_finding(
    format: Format,
    file: &str,
    path: Option<&str>,
    rule: &str,
    message: &str,
) {
    let at = path.map(|p| format!("{p}: ")).unwrap_or_default();
    match format {
        Format::Github => println!(
            "::error file={},title={}::{}",
            github_escape(file, true),
            github_escape(rule, true),
            github_escape(&format!("{at}{rule}: {message}"), false)
        ),
        _ => println!("{file}: {at}{rule}: {message}"),
    }
}

/// Escapes a GitHub workflow-command message (`property` also escapes `:` and `,`).
fn github_escape(s: &str, property: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '%' => out.push_str("%25"),
            '\r' => out.push_str("%0D"),
            '\n' => out.push_str("%0A"),
            ':' if property => out.push_str("%3A"),
            ',' if property => out.push_str("%2C"),
            c => out.push(c),
        }
    }
    out
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Schema(cmd) => schema::run(cmd),
        Command::Lint(args) => lint::run(&args),
        Command::Dlq(cmd) => dlq::run(cmd),
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(100),
        Err(Failure::Input(m)) => {
            eprintln!("herald: {m}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(m)) => {
            eprintln!("herald: {m}");
            ExitCode::from(1)
        }
    }
}
