//! `herald dlq …`: list, inspect and replay dead-letter topics on Kafka and NATS.
//!
//! Reading never consumes: on Kafka the entries are read with a consumer that assigns
//! the partitions itself and never commits, from the replay group's committed position
//! (`herald-dlq-replay`) to the high watermark taken at the start; on NATS with an
//! ephemeral ordered consumer (no acks) up to the stream's last sequence taken at the start.
//!
//! Replay republishes each selected entry to its original topic (`herald-original-topic`)
//! or `--to`, with its message id and without the `herald-*` dead-letter and retry
//! headers, and removes the entry only after the broker acknowledged the republish:
//!
//! * **Kafka** cannot delete one record, so the DLQ's "removed" line is the replay
//!   group's committed offset: it moves to the first entry not yet replayed, and entries
//!   replayed beyond it (when filters skipped an earlier one) are recorded in the commit's
//!   metadata. `list` and `inspect` show only entries after the committed offset and not
//!   in that record; skipped entries stay visible and replayable.
//! * **NATS**: the DLQ stream's message is deleted by sequence after the republish's
//!   PubAck. The republish carries `Nats-Msg-Id` = `<id>:replay:<stream>:<sequence>`
//!   (its `ce-id` stays the message id): the original's own `Nats-Msg-Id` would be
//!   dropped by the target stream's duplicate window, and a replay run again after an
//!   interruption is then deduplicated by the server within that window.
//!
//! A replay killed midway loses nothing: an entry is removed only after its republish was
//! acknowledged, so at worst it is republished again by the next run (same message id,
//! which a dedupe store catches).

mod kafka;
mod kafka_read;
mod nats;

use std::{
    collections::{BTreeMap, HashSet},
    io::IsTerminal,
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use clap::{Args, Subcommand, ValueEnum};
use herald_core::{Message, message::names, retry_topics::is_retry_header};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Value as Json, json};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use crate::{Failure, Outcome};

/// The consumer group whose committed offsets mark what `replay` moved (Kafka).
pub(crate) const REPLAY_GROUP: &str = "herald-dlq-replay";

#[derive(Debug, Subcommand)]
pub(crate) enum DlqCommand {
    /// Count the entries of a dead-letter topic by error, handler and original topic.
    List(ListArgs),
    /// Show entries: headers, attempts, error and the payload.
    Inspect(InspectArgs),
    /// Republish entries to their original topic (or --to) and remove them from the DLQ.
    Replay(ReplayArgs),
}

/// Which broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Transport {
    /// Apache Kafka (or a Kafka-protocol broker).
    Kafka,
    /// NATS JetStream.
    Nats,
}

/// How `list` and `inspect` print.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub(crate) enum DlqFormat {
    /// Human-readable text.
    #[default]
    Text,
    /// One JSON document on stdout.
    Json,
}

#[derive(Debug, Args)]
pub(crate) struct Connection {
    /// The broker.
    #[arg(long, value_enum, env = "HERALD_TRANSPORT")]
    transport: Transport,
    /// Kafka bootstrap servers (host:port,…).
    #[arg(long, env = "HERALD_KAFKA_BROKERS", value_name = "HOST:PORT")]
    brokers: Option<String>,
    /// NATS server URL.
    #[arg(long, env = "HERALD_NATS_URL", value_name = "URL")]
    url: Option<String>,
    /// Kafka: the consumer group whose committed position marks what was replayed.
    #[arg(long, default_value = REPLAY_GROUP)]
    group: String,
    /// The dead-letter topic (`orders.dlq`), or the topic whose dead-letter topic to use
    /// (`orders` means `orders.dlq`).
    topic: String,
}

impl Connection {
    fn dlq_topic(&self) -> String {
        if self.topic.ends_with(".dlq") {
            self.topic.clone()
        } else {
            herald_core::dlq_topic(&self.topic)
        }
    }
}

#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    conn: Connection,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    format: DlqFormat,
}

#[derive(Debug, Args)]
pub(crate) struct InspectArgs {
    #[command(flatten)]
    conn: Connection,
    /// Only this message id (repeat for more).
    #[arg(long = "id", value_name = "ID")]
    ids: Vec<String>,
    /// At most this many entries, oldest first.
    #[arg(long, default_value_t = 20)]
    limit: usize,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    format: DlqFormat,
    /// Decode Avro payloads (Confluent wire format) with the schemas under this directory
    /// (`<subject>/v<N>.avsc`, ids as `herald schema` assigns them).
    #[arg(long, value_name = "DIR")]
    schemas: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct ReplayArgs {
    #[command(flatten)]
    conn: Connection,
    /// Republish here instead of each entry's original topic.
    #[arg(long, value_name = "TOPIC")]
    to: Option<String>,
    /// Only this message id (repeat for more).
    #[arg(long = "id", value_name = "ID")]
    ids: Vec<String>,
    /// Only entries whose `herald-error` contains this text.
    #[arg(long, value_name = "TEXT")]
    error_contains: Option<String>,
    /// Only entries that failed at or after this time: RFC 3339, or a duration ago
    /// (`90m`, `2h`, `1day`).
    #[arg(long, value_name = "TIME", value_parser = parse_since)]
    since: Option<OffsetDateTime>,
    /// At most this many republishes per second (`50` or `50/s`).
    #[arg(long, value_name = "N/s", value_parser = parse_rate)]
    rate: Option<f64>,
    /// Show what would move, move nothing.
    #[arg(long)]
    dry_run: bool,
}

fn parse_since(s: &str) -> Result<OffsetDateTime, String> {
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return Ok(t);
    }
    let ago = humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is neither RFC 3339 nor a duration: {e}"))?;
    Ok(OffsetDateTime::now_utc() - ago)
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let n = s.trim().trim_end_matches("/s").trim();
    match n.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!("{s:?} is not a positive rate (e.g. 50 or 50/s)")),
    }
}

/// Where an entry sits in the dead-letter topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Position {
    /// A Kafka record.
    Kafka { partition: i32, offset: i64 },
    /// A JetStream stream message.
    Nats { sequence: u64 },
}

impl Position {
    fn json(self) -> Json {
        match self {
            Self::Kafka { partition, offset } => json!({"partition": partition, "offset": offset}),
            Self::Nats { sequence } => json!({"sequence": sequence}),
        }
    }
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Kafka { partition, offset } => write!(f, "partition {partition} offset {offset}"),
            Self::Nats { sequence } => write!(f, "sequence {sequence}"),
        }
    }
}

/// One dead-letter entry.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub(crate) message: Message,
    pub(crate) position: Position,
}

impl Entry {
    fn header(&self, name: &str) -> Option<&str> {
        self.message.header(name)
    }

    fn failed_at(&self) -> Option<OffsetDateTime> {
        self.header(names::DLQ_FAILED_AT)
            .and_then(|s| OffsetDateTime::parse(s, &Rfc3339).ok())
    }

    fn original_position(&self) -> Json {
        let mut m = serde_json::Map::new();
        for (name, v) in self.message.headers.iter() {
            if let Some(pos) = name.strip_prefix(names::DLQ_ORIGINAL_PREFIX)
                && name != names::DLQ_ORIGINAL_TOPIC
            {
                let text = String::from_utf8_lossy(v);
                let value = text
                    .parse::<i64>()
                    .map_or_else(|_| json!(text), |n| json!(n));
                m.insert(pos.to_owned(), value);
            }
        }
        Json::Object(m)
    }

    /// The message to republish: same id, key and payload, without herald's dead-letter
    /// and retry headers.
    fn replayable(&self) -> Message {
        let headers = self
            .message
            .headers
            .iter()
            .filter(|(n, _)| !is_retry_header(n))
            .map(|(n, v)| (n.to_owned(), v.clone()))
            .collect();
        Message {
            id: self.message.id.clone(),
            key: self.message.key.clone(),
            headers,
            payload: self.message.payload.clone(),
        }
    }
}

/// A connected broker.
enum Backend {
    Kafka(kafka::KafkaDlq),
    Nats(Box<nats::NatsDlq>),
}

impl Backend {
    async fn connect(c: &Connection) -> Result<Self, Failure> {
        match c.transport {
            Transport::Kafka => {
                let brokers = c
                    .brokers
                    .clone()
                    .filter(|b| !b.trim().is_empty())
                    .ok_or_else(|| {
                        Failure::Input(
                            "--brokers (or HERALD_KAFKA_BROKERS) is needed for Kafka".into(),
                        )
                    })?;
                Ok(Self::Kafka(kafka::KafkaDlq::new(brokers, c.group.clone())))
            }
            Transport::Nats => {
                let url = c
                    .url
                    .clone()
                    .filter(|u| !u.trim().is_empty())
                    .ok_or_else(|| {
                        Failure::Input("--url (or HERALD_NATS_URL) is needed for NATS".into())
                    })?;
                Ok(Self::Nats(Box::new(nats::NatsDlq::connect(&url).await?)))
            }
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Self::Kafka(_) => "kafka",
            Self::Nats(_) => "nats",
        }
    }

    /// The entries not yet replayed, oldest first (per partition on Kafka).
    async fn read(&mut self, topic: &str) -> Result<Vec<Entry>, Failure> {
        match self {
            Self::Kafka(k) => k.read(topic).await,
            Self::Nats(n) => n.read(topic).await,
        }
    }

    /// Republishes `messages` to `target` and waits for the broker's acknowledgement.
    async fn publish(&mut self, target: &str, batch: &[(&Entry, Message)]) -> Result<(), Failure> {
        match self {
            Self::Kafka(k) => k.publish(target, batch).await,
            Self::Nats(n) => n.publish(target, batch).await,
        }
    }

    /// Whether entries may be removed only as an unbroken prefix of each partition (Kafka
    /// on a broker that drops offset-commit metadata).
    async fn prefix_only(&mut self, topic: &str) -> Result<bool, Failure> {
        match self {
            Self::Kafka(k) => Ok(!k.keeps_metadata(topic).await?),
            Self::Nats(_) => Ok(false),
        }
    }

    /// Removes republished entries from the DLQ.
    async fn remove(&mut self, topic: &str, entries: &[&Entry]) -> Result<(), Failure> {
        match self {
            Self::Kafka(k) => k.remove(topic, entries).await,
            Self::Nats(n) => n.remove(entries).await,
        }
    }
}

pub(crate) fn run(cmd: DlqCommand) -> Outcome {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(format!("starting the runtime: {e}")))?;
    rt.block_on(async move {
        match cmd {
            DlqCommand::List(a) => list(a).await,
            DlqCommand::Inspect(a) => inspect(a).await,
            DlqCommand::Replay(a) => replay(a).await,
        }
    })
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// Entries grouped by error, handler and original topic.
#[derive(Default)]
struct Group {
    count: usize,
    oldest: Option<OffsetDateTime>,
    newest: Option<OffsetDateTime>,
}

impl Group {
    fn add(&mut self, at: Option<OffsetDateTime>) {
        self.count += 1;
        if let Some(t) = at {
            self.oldest = Some(self.oldest.map_or(t, |o| o.min(t)));
            self.newest = Some(self.newest.map_or(t, |n| n.max(t)));
        }
    }
}

async fn list(a: ListArgs) -> Outcome {
    let topic = a.conn.dlq_topic();
    let mut backend = Backend::connect(&a.conn).await?;
    let entries = backend.read(&topic).await?;
    let mut total = Group::default();
    let mut groups: BTreeMap<(String, String, String), Group> = BTreeMap::new();
    for e in &entries {
        let at = e.failed_at();
        total.add(at);
        let key = (
            e.header(names::DLQ_ERROR).unwrap_or("-").to_owned(),
            e.header(names::DLQ_HANDLER).unwrap_or("-").to_owned(),
            e.header(names::DLQ_ORIGINAL_TOPIC)
                .unwrap_or("-")
                .to_owned(),
        );
        groups.entry(key).or_default().add(at);
    }
    let t = |o: Option<OffsetDateTime>| o.map(rfc3339);
    match a.format {
        DlqFormat::Json => {
            let groups: Vec<Json> = groups
                .iter()
                .map(|((error, handler, original), g)| {
                    json!({
                        "error": error, "handler": handler, "original_topic": original,
                        "count": g.count, "oldest_failed_at": t(g.oldest), "newest_failed_at": t(g.newest),
                    })
                })
                .collect();
            let doc = json!({
                "topic": topic, "transport": backend.name(), "total": total.count,
                "oldest_failed_at": t(total.oldest), "newest_failed_at": t(total.newest),
                "groups": groups,
            });
            println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
        }
        DlqFormat::Text => {
            println!("{topic} ({}): {} entries", backend.name(), total.count);
            if total.count == 0 {
                return Ok(true);
            }
            println!(
                "failed between {} and {}",
                t(total.oldest).unwrap_or_else(|| "?".into()),
                t(total.newest).unwrap_or_else(|| "?".into())
            );
            println!();
            println!(
                "{:>7}  {:<20}  {:<20}  {:<24}  {:<24}  error",
                "count", "handler", "original topic", "oldest", "newest"
            );
            for ((error, handler, original), g) in &groups {
                println!(
                    "{:>7}  {:<20}  {:<20}  {:<24}  {:<24}  {}",
                    g.count,
                    handler,
                    original,
                    t(g.oldest).unwrap_or_else(|| "-".into()),
                    t(g.newest).unwrap_or_else(|| "-".into()),
                    one_line(error)
                );
            }
        }
    }
    Ok(true)
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// The payload for display: JSON, Avro decoded with the known schemas, or hex.
async fn decode_payload(
    payload: &[u8],
    avro: Option<&herald_avro::AvroCodec>,
) -> (&'static str, Json, Option<String>) {
    if let Ok(v) = serde_json::from_slice::<Json>(payload) {
        return ("json", v, None);
    }
    let mut note = None;
    if let Some(codec) = avro
        && payload.first() == Some(&0)
        && payload.len() >= 5
    {
        match codec.decode_value(None, payload).await {
            Ok(v) => match Json::try_from(v) {
                Ok(j) => return ("avro", j, None),
                Err(e) => note = Some(format!("avro value not representable as JSON: {e}")),
            },
            Err(e) => note = Some(format!("not decoded as Avro: {e}")),
        }
    }
    ("hex", json!(hex::encode(payload)), note)
}

fn header_json(v: &[u8]) -> Json {
    match std::str::from_utf8(v) {
        Ok(s) => json!(s),
        Err(_) => json!({ "hex": hex::encode(v) }),
    }
}

async fn inspect(a: InspectArgs) -> Outcome {
    let topic = a.conn.dlq_topic();
    let avro = match &a.schemas {
        Some(dir) => {
            let registry = herald_avro::DirectoryRegistry::open(dir)
                .map_err(|e| Failure::Input(format!("--schemas {}: {e}", dir.display())))?;
            Some(herald_avro::AvroCodec::new(Arc::new(registry)).auto_register(false))
        }
        None => None,
    };
    let mut backend = Backend::connect(&a.conn).await?;
    let entries = backend.read(&topic).await?;
    let ids: HashSet<&str> = a.ids.iter().map(String::as_str).collect();
    let shown: Vec<&Entry> = entries
        .iter()
        .filter(|e| ids.is_empty() || ids.contains(e.message.id.as_str()))
        .take(a.limit)
        .collect();
    let mut docs = Vec::with_capacity(shown.len());
    for e in &shown {
        let m = &e.message;
        let (encoding, payload, note) = decode_payload(&m.payload, avro.as_ref()).await;
        let headers: Vec<Json> = m
            .headers
            .iter()
            .map(|(n, v)| json!([n, header_json(v)]))
            .collect();
        docs.push(json!({
            "id": m.id,
            "key": m.key.as_deref().map(header_json),
            "position": e.position.json(),
            "attempts": e.header(names::DLQ_ATTEMPTS).and_then(|s| s.parse::<u64>().ok()),
            "error": e.header(names::DLQ_ERROR),
            "error_class": e.header(names::DLQ_ERROR_CLASS),
            "original_topic": e.header(names::DLQ_ORIGINAL_TOPIC),
            "original_position": e.original_position(),
            "handler": e.header(names::DLQ_HANDLER),
            "group": e.header(names::DLQ_GROUP),
            "failed_at": e.header(names::DLQ_FAILED_AT),
            "headers": headers,
            "payload_encoding": encoding,
            "payload": payload,
            "payload_note": note,
        }));
    }
    match a.format {
        DlqFormat::Json => {
            let doc = json!({
                "topic": topic, "transport": backend.name(), "total": entries.len(), "entries": docs,
            });
            println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
        }
        DlqFormat::Text => {
            println!(
                "{topic} ({}): showing {} of {} entries",
                backend.name(),
                shown.len(),
                entries.len()
            );
            for (e, d) in shown.iter().zip(&docs) {
                let s = |k: &str| {
                    d[k].as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| "-".into())
                };
                println!();
                println!("── {} ({})", e.message.id, e.position);
                println!("  key:            {}", e.message.key_str().unwrap_or("-"));
                println!(
                    "  error:          {} ({})",
                    one_line(&s("error")),
                    s("error_class")
                );
                println!("  attempts:       {}", d["attempts"]);
                println!(
                    "  original:       {} {}",
                    s("original_topic"),
                    d["original_position"]
                );
                println!("  handler/group:  {} / {}", s("handler"), s("group"));
                println!("  failed at:      {}", s("failed_at"));
                println!("  headers:");
                for (n, v) in e.message.headers.iter() {
                    println!("    {n}: {}", header_json(v));
                }
                println!(
                    "  payload ({}):",
                    d["payload_encoding"].as_str().unwrap_or("?")
                );
                if let Some(note) = d["payload_note"].as_str() {
                    println!("    ({note})");
                }
                let body = match &d["payload"] {
                    Json::String(h) if d["payload_encoding"] == "hex" => h.clone(),
                    other => serde_json::to_string_pretty(other).unwrap_or_default(),
                };
                for line in body.lines() {
                    println!("    {line}");
                }
            }
        }
    }
    Ok(true)
}

/// Whether `e` passes the replay filters.
fn selected(a: &ReplayArgs, ids: &HashSet<&str>, e: &Entry) -> bool {
    if !ids.is_empty() && !ids.contains(e.message.id.as_str()) {
        return false;
    }
    if let Some(s) = &a.error_contains
        && !e
            .header(names::DLQ_ERROR)
            .is_some_and(|err| err.contains(s.as_str()))
    {
        return false;
    }
    if let Some(since) = a.since
        && e.failed_at().is_none_or(|t| t < since)
    {
        return false;
    }
    true
}

/// Paces republishes to `rate` per second.
struct Pace {
    every: Option<Duration>,
    next: tokio::time::Instant,
}

impl Pace {
    fn new(rate: Option<f64>) -> Self {
        Self {
            every: rate.map(|r| Duration::from_secs_f64(1.0 / r)),
            next: tokio::time::Instant::now(),
        }
    }

    async fn wait(&mut self) {
        if let Some(every) = self.every {
            tokio::time::sleep_until(self.next).await;
            self.next = tokio::time::Instant::now().max(self.next) + every;
        }
    }
}

/// The partition an entry sits in (one for NATS).
fn partition_of(e: &Entry) -> i64 {
    match e.position {
        Position::Kafka { partition, .. } => i64::from(partition),
        Position::Nats { .. } => 0,
    }
}

/// Whether the planned entries (indices into `entries`) form an unbroken prefix of each
/// partition.
fn is_prefix(entries: &[Entry], planned: &HashSet<usize>) -> bool {
    let mut broken: HashSet<i64> = HashSet::new();
    for (i, e) in entries.iter().enumerate() {
        let p = partition_of(e);
        if planned.contains(&i) {
            if broken.contains(&p) {
                return false;
            }
        } else {
            broken.insert(p);
        }
    }
    true
}

/// The planned entries before each partition's first unplanned one.
fn prefix_of(entries: &[Entry], planned: &HashSet<usize>) -> HashSet<usize> {
    let mut broken: HashSet<i64> = HashSet::new();
    let mut keep = HashSet::new();
    for (i, e) in entries.iter().enumerate() {
        let p = partition_of(e);
        if !planned.contains(&i) {
            broken.insert(p);
        } else if !broken.contains(&p) {
            keep.insert(i);
        }
    }
    keep
}

/// Largest batch republished (and removed) at once when no rate is set.
const BATCH: usize = 100;

async fn replay(a: ReplayArgs) -> Outcome {
    let topic = a.conn.dlq_topic();
    let mut backend = Backend::connect(&a.conn).await?;
    let entries = backend.read(&topic).await?;
    let ids: HashSet<&str> = a.ids.iter().map(String::as_str).collect();
    let chosen: Vec<usize> = (0..entries.len())
        .filter(|i| selected(&a, &ids, &entries[*i]))
        .collect();
    let mut no_target = 0usize;
    let mut plan: Vec<(usize, String)> = Vec::with_capacity(chosen.len());
    for &i in &chosen {
        let e = &entries[i];
        match a
            .to
            .clone()
            .or_else(|| e.header(names::DLQ_ORIGINAL_TOPIC).map(str::to_owned))
        {
            Some(t) if !t.is_empty() => plan.push((i, t)),
            _ => {
                no_target += 1;
                eprintln!(
                    "herald: {} ({}) has no {} header; kept (use --to)",
                    e.message.id,
                    e.position,
                    names::DLQ_ORIGINAL_TOPIC
                );
            }
        }
    }
    // Kafka removes entries by moving a committed offset; entries moved beyond an entry
    // that stays are recorded in the commit's metadata. A broker that drops that metadata
    // only allows moving each partition's unbroken prefix.
    let mut behind = 0usize;
    let planned: HashSet<usize> = plan.iter().map(|(i, _)| *i).collect();
    if matches!(backend, Backend::Kafka(_))
        && !is_prefix(&entries, &planned)
        && backend.prefix_only(&topic).await?
    {
        let keep = prefix_of(&entries, &planned);
        plan.retain(|(i, _)| keep.contains(i));
        behind = planned.len() - plan.len();
        eprintln!(
            "herald: this broker does not keep offset-commit metadata, so only entries before \
             the first kept one of each partition can be removed; {behind} selected entries sit \
             behind kept ones and stay (replay them once those are gone)"
        );
    }
    let verb = if a.dry_run { "would move" } else { "moved" };
    let bar = if std::io::stdout().is_terminal() && !a.dry_run {
        ProgressBar::with_draw_target(Some(plan.len() as u64), ProgressDrawTarget::stdout())
    } else {
        ProgressBar::hidden()
    };
    if let Ok(style) = ProgressStyle::with_template("{bar:40} {pos}/{len} {per_sec} eta {eta}") {
        bar.set_style(style);
    }
    let mut pace = Pace::new(a.rate);
    let batch_size = if a.rate.is_some() { 1 } else { BATCH };
    let mut moved = 0usize;
    let mut i = 0;
    while i < plan.len() {
        let target = &plan[i].1;
        let mut batch: Vec<(&Entry, Message)> = Vec::new();
        while i < plan.len() && &plan[i].1 == target && batch.len() < batch_size {
            let e = &entries[plan[i].0];
            batch.push((e, e.replayable()));
            i += 1;
        }
        if !a.dry_run {
            pace.wait().await;
            if let Err(f) = backend.publish(target, &batch).await {
                bar.finish_and_clear();
                println!("{moved} moved before the failure; the rest stay in {topic}");
                return Err(f);
            }
            let done: Vec<&Entry> = batch.iter().map(|(e, _)| *e).collect();
            if let Err(f) = backend.remove(&topic, &done).await {
                bar.finish_and_clear();
                println!(
                    "{} republished but not removed (they will be republished again by the next replay: same ids)",
                    done.len()
                );
                return Err(f);
            }
        }
        for (e, _) in &batch {
            let line = format!("{verb} {} ({}) -> {target}", e.message.id, e.position);
            bar.suspend(|| println!("{line}"));
            bar.inc(1);
            moved += 1;
        }
    }
    bar.finish_and_clear();
    let kept = entries.len() - moved;
    println!(
        "{verb} {moved} of {} entries from {topic}; {kept} kept ({} not selected, {no_target} without a target, {behind} behind kept entries)",
        entries.len(),
        entries.len() - chosen.len(),
    );
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_times_parse() {
        assert_eq!(parse_rate("50").unwrap(), 50.0);
        assert_eq!(parse_rate("2.5/s").unwrap(), 2.5);
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("fast").is_err());
        let t = parse_since("2024-05-01T10:00:00Z").unwrap();
        assert_eq!(t.unix_timestamp(), 1_714_557_600);
        let ago = OffsetDateTime::now_utc() - parse_since("2h").unwrap();
        assert!((ago.whole_seconds() - 7200).abs() < 5);
        assert!(parse_since("yesterday-ish").is_err());
    }

    #[test]
    fn replayable_strips_herald_headers_and_keeps_the_rest() {
        let m = Message::with_id("id-1", "p")
            .with_key("k")
            .with_type("OrderCreated.v1")
            .with_header("herald-error", "boom")
            .with_header("herald-original-offset", "4")
            .with_header("herald-due-at", "1")
            .with_header("herald-attempts", "3");
        let e = Entry {
            message: m,
            position: Position::Nats { sequence: 1 },
        };
        let r = e.replayable();
        assert_eq!(r.id, "id-1");
        assert_eq!(r.key_str(), Some("k"));
        assert_eq!(r.ce_type(), Some("OrderCreated.v1"));
        assert_eq!(r.headers.len(), 1);
        assert_eq!(e.original_position(), json!({"offset": 4}));
    }
}
