//! `herald schema …`: check, register, diff.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use herald_avro::{
    CompatibilityMode, ConfluentRegistry, ErrorKind, NatsKvRegistry, ParsedSchema, SchemaRegistry,
    Violation,
    compat::{self, SchemaVersion},
    diff::{self, ChangeKind},
    registry::directory::{read_schema_file, scan},
};
use serde_json::json;

use crate::{Failure, Format, Outcome, print_finding};

#[derive(Debug, Subcommand)]
pub(crate) enum SchemaCommand {
    /// Check a schema against earlier versions, or every subject of a schema directory.
    Check(CheckArgs),
    /// Register a schema under a subject (Confluent REST URL, or nats://… for a NATS KV registry).
    Register(RegisterArgs),
    /// List fields added, removed and changed from OLD to NEW.
    Diff(DiffArgs),
}

#[derive(Debug, Args)]
pub(crate) struct CheckArgs {
    /// The new schema.
    #[arg(required_unless_present = "dir", conflicts_with = "dir")]
    new: Option<PathBuf>,
    /// An earlier version; repeat, oldest first. Non-transitive modes use the last one.
    #[arg(long, value_name = "OLD.avsc", required_unless_present = "dir")]
    against: Vec<PathBuf>,
    /// BACKWARD, BACKWARD_TRANSITIVE, FORWARD, FORWARD_TRANSITIVE, FULL, FULL_TRANSITIVE or
    /// NONE (any case). With --dir: the mode of subjects without a config.json (default BACKWARD).
    #[arg(long, value_parser = parse_mode, required_unless_present = "dir")]
    mode: Option<CompatibilityMode>,
    /// Check every subject under this directory (`<subject>/v<N>.avsc`, optional config.json).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

#[derive(Debug, Args)]
pub(crate) struct RegisterArgs {
    /// Registry URL: http(s)://… (Confluent API) or nats://… (NATS KV bucket).
    #[arg(long)]
    registry: String,
    /// The subject, e.g. orders.order-created-value.
    #[arg(long)]
    subject: String,
    /// The KV bucket, for a nats:// registry.
    #[arg(long, default_value = "herald-schemas")]
    bucket: String,
    /// The schema file.
    file: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct DiffArgs {
    /// The old schema.
    old: PathBuf,
    /// The new schema.
    new: PathBuf,
    /// Output format (`github` prints like `text`).
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

fn parse_mode(s: &str) -> Result<CompatibilityMode, String> {
    s.parse()
        .map_err(|e: herald_avro::Error| e.message().to_owned())
}

/// Input problems exit 2, everything else 1.
fn failure(e: herald_avro::Error) -> Failure {
    match e.kind() {
        ErrorKind::InvalidSchema | ErrorKind::Layout => Failure::Input(e.message().to_owned()),
        _ => Failure::Runtime(e.to_string()),
    }
}

fn load(path: &Path) -> Result<ParsedSchema, Failure> {
    read_schema_file(path).map_err(failure)
}

pub(crate) fn run(cmd: SchemaCommand) -> Outcome {
    match cmd {
        SchemaCommand::Check(a) => check(&a),
        SchemaCommand::Register(a) => register(&a),
        SchemaCommand::Diff(a) => diff(&a),
    }
}

fn check(a: &CheckArgs) -> Outcome {
    let (violations, checked) = match (&a.dir, &a.new) {
        (Some(dir), _) => check_dir(dir, a.mode.unwrap_or_default())?,
        (None, Some(new)) => {
            let mode = a.mode.unwrap_or_default();
            let labels: Vec<String> = a.against.iter().map(|p| p.display().to_string()).collect();
            let olds = a
                .against
                .iter()
                .map(|p| load(p))
                .collect::<Result<Vec<_>, _>>()?;
            let new_label = new.display().to_string();
            let new = load(new)?;
            let previous: Vec<_> = labels
                .iter()
                .zip(&olds)
                .map(|(label, schema)| SchemaVersion { label, schema })
                .collect();
            let v = compat::check(
                mode,
                SchemaVersion {
                    label: &new_label,
                    schema: &new,
                },
                &previous,
            );
            (v, format!("{new_label} ({mode})"))
        }
        (None, None) => return Err(Failure::Input("give NEW.avsc or --dir".into())),
    };
    report(a.format, &violations, &checked);
    Ok(violations.is_empty())
}

/// Every subject's versions in order, each against the ones before it.
fn check_dir(
    dir: &Path,
    default_mode: CompatibilityMode,
) -> Result<(Vec<Violation>, String), Failure> {
    let subjects = scan(dir).map_err(failure)?;
    let mut violations = Vec::new();
    let mut files = 0;
    for s in &subjects {
        let mode = s.compatibility.unwrap_or(default_mode);
        let labels: Vec<String> = s
            .versions
            .iter()
            .map(|(_, p)| p.display().to_string())
            .collect();
        let schemas = s
            .versions
            .iter()
            .map(|(_, p)| load(p))
            .collect::<Result<Vec<_>, _>>()?;
        let versions: Vec<_> = labels
            .iter()
            .zip(&schemas)
            .map(|(label, schema)| SchemaVersion { label, schema })
            .collect();
        for i in 1..versions.len() {
            violations.extend(compat::check(mode, versions[i], &versions[..i]));
        }
        files += versions.len();
    }
    Ok((
        violations,
        format!(
            "{} subjects, {files} schemas under {}",
            subjects.len(),
            dir.display()
        ),
    ))
}

fn report(format: Format, violations: &[Violation], checked: &str) {
    if format == Format::Json {
        let doc = json!({ "compatible": violations.is_empty(), "violations": violations });
        println!("{doc}");
        return;
    }
    for v in violations {
        let direction = match v.direction {
            compat::Direction::Backward => "new reads old",
            compat::Direction::Forward => "old reads new",
        };
        let message = format!("{} (against {}, {direction})", v.message, v.against);
        print_finding(format, &v.new, Some(&v.path), v.rule.as_str(), &message);
    }
    match violations.len() {
        0 => eprintln!("compatible: {checked}"),
        n => eprintln!("incompatible: {n} violation(s) in {checked}"),
    }
}

fn register(a: &RegisterArgs) -> Outcome {
    let schema = load(&a.file)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(format!("starting the runtime: {e}")))?;
    let result = rt.block_on(async {
        let registry: Box<dyn SchemaRegistry> =
            if a.registry.starts_with("nats://") || a.registry.starts_with("tls://") {
                Box::new(NatsKvRegistry::connect_url(&a.registry, &a.bucket).await?)
            } else {
                Box::new(ConfluentRegistry::new(a.registry.clone())?)
            };
        registry.register(&a.subject, schema.text()).await
    });
    match result {
        Ok(id) => {
            println!(
                "registered {} under `{}` with id {id}",
                a.file.display(),
                a.subject
            );
            Ok(true)
        }
        Err(e) if e.kind() == ErrorKind::Incompatible => {
            let label = a.file.display().to_string();
            for v in e.violations() {
                print_finding(
                    Format::Text,
                    &label,
                    Some(&v.path),
                    v.rule.as_str(),
                    &v.message,
                );
            }
            eprintln!("herald: {e}");
            Ok(false)
        }
        Err(e) => Err(failure(e)),
    }
}

fn diff(a: &DiffArgs) -> Outcome {
    let (old, new) = (load(&a.old)?, load(&a.new)?);
    let changes = diff::diff(&old, &new);
    if a.format == Format::Json {
        println!("{}", json!({ "changes": changes }));
        return Ok(true);
    }
    if changes.is_empty() {
        eprintln!("no field differences");
    }
    for c in &changes {
        let path = if c.path.is_empty() { "(root)" } else { &c.path };
        let (old, new) = (
            c.old.as_deref().unwrap_or(""),
            c.new.as_deref().unwrap_or(""),
        );
        match c.kind {
            ChangeKind::Added => println!("+ {path}: {new}"),
            ChangeKind::Removed => println!("- {path}: {old}"),
            ChangeKind::Changed => println!("~ {path}: {old} -> {new}"),
        }
    }
    Ok(true)
}
