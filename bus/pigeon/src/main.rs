//! The `pigeon` binary: the bus's roles and the operator's tools.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use pigeon::cli::deadletters;
use pigeon::cli::{self, client::Client, dictionary, routes};
use pigeon::dev::{self, DevOptions};
use pigeon::serve;
use pigeon_bus::config::{BusConfig, LogFormat, Role};
use pigeon_bus::deadletter::DeadLetterFilter;
use pigeon_bus::dryrun::{dry_run, SampleLetter};
use pigeon_bus::route::{DestinationSpec, RouteTable};
use pigeon_bus::script::{Limits, ScriptEngine};
use pigeon_bus::{control, kafka, topics};
use rdkafka::mocking::MockCluster;
use tokio_util::sync::CancellationToken;

/// Pigeon: the event-routing bus for live-stream activity systems.
#[derive(Parser)]
#[command(name = "pigeon", version, about)]
struct Cli {
    /// Configuration file (TOML); flags override it.
    #[arg(long, short = 'c', global = true, env = "PIGEON_CONFIG")]
    config: Option<PathBuf>,
    /// Log lines as `text` or `json` (one object a line); overrides `[log] format`.
    #[arg(long, global = true, value_enum, env = "PIGEON_LOG_FORMAT")]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run everything on this machine: an in-process Kafka, SQLite, and a demo activity.
    Dev {
        /// Where the SQLite file is kept.
        #[arg(long, default_value = ".pigeon")]
        data_dir: PathBuf,
        /// Admin server address (port 0 picks a free one).
        #[arg(long)]
        listen: Option<String>,
        /// Do not produce demo gift letters.
        #[arg(long)]
        no_demo_traffic: bool,
    },
    /// Run only the in-process Kafka-protocol broker (librdkafka's mock cluster) as a process of
    /// its own, for benchmarks and tools: prints `kafka: <bootstrap servers>`, runs until
    /// SIGTERM or Ctrl-C. It keeps only the newest ~5 MB or 100,000 messages per partition.
    DevBroker {
        /// A topic to create, `NAME` or `NAME:PARTITIONS` (repeat for more); other topics are
        /// created on first use, with 4 partitions.
        #[arg(long = "topic", value_name = "NAME[:PARTITIONS]", value_parser = dev::parse_topic_spec)]
        topics: Vec<(String, i32)>,
        /// Partitions of the topics named without a count.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(i32).range(1..=10_000))]
        partitions: i32,
        /// Brokers in the cluster.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..=16))]
        brokers: i32,
    },
    /// Run the bus against real Kafka and MySQL/TiDB (or SQLite).
    Serve {
        #[command(flatten)]
        connect: Connect,
        /// Admin server address (port 0 picks a free one).
        #[arg(long)]
        listen: Option<String>,
        /// Roles to run, comma-separated (default: all, or the config's `roles`).
        #[arg(long, value_enum, value_delimiter = ',')]
        roles: Vec<Role>,
    },
    /// Apply database migrations and exit.
    Migrate {
        /// Database URL: sqlite://PATH or mysql://USER:PASSWORD@HOST:PORT/DB.
        #[arg(long, env = "PIGEON_DATABASE")]
        database: Option<String>,
    },
    /// Manage the bus's Kafka topics.
    Topics {
        #[command(subcommand)]
        command: TopicsCommand,
    },
    /// Manage API tokens, directly in the store.
    Tokens {
        /// Database URL: sqlite://PATH or mysql://USER:PASSWORD@HOST:PORT/DB.
        #[arg(long, global = true, env = "PIGEON_DATABASE")]
        database: Option<String>,
        #[command(subcommand)]
        command: TokensCommand,
    },
    /// Try Rhai cleansing scripts without Kafka.
    Scripts {
        #[command(subcommand)]
        command: ScriptsCommand,
    },
    /// Pigeons as files, through the admin API.
    Routes {
        #[command(flatten)]
        remote: Remote,
        #[command(subcommand)]
        command: RoutesCommand,
    },
    /// Failed deliveries: list, show, retry, edit, discard (through the admin API).
    DeadLetters {
        #[command(flatten)]
        remote: Remote,
        #[command(subcommand)]
        command: DeadLettersCommand,
    },
    /// Replay archived letters: count first (--dry-run), then send at a rate with a progress
    /// bar; the job runs on the server (through the admin API).
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Replay {
        #[command(flatten)]
        remote: Remote,
        #[command(flatten)]
        start: ReplayArgs,
        #[command(subcommand)]
        command: Option<ReplayCommand>,
    },
    /// A letter's path through the bus: where it was read, the pigeons and outputs, whether
    /// the router acknowledged it, dead letters, archive row, replays and modules' receipts. By
    /// id, or for the archived letters a time window and business keys select (through the
    /// admin API).
    Trace {
        #[command(flatten)]
        remote: Remote,
        /// The letter id.
        #[arg(required_unless_present = "since")]
        letter_id: Option<String>,
        /// Instead of an id: archived letters from an age (`2h`) or a time (RFC 3339) on.
        #[arg(long, conflicts_with = "letter_id")]
        since: Option<String>,
        /// Until (exclusive): an age or a time; default now.
        #[arg(long, requires = "since")]
        until: Option<String>,
        /// A business key, `userId=42`; repeat for several.
        #[arg(long = "key", value_name = "FIELD=VALUE", requires = "since")]
        keys: Vec<String>,
        /// Only letters of this source topic.
        #[arg(long, requires = "since")]
        topic: Option<String>,
        /// Only letters with this tag.
        #[arg(long, requires = "since")]
        tag: Option<String>,
        /// Letters traced at most (1 to 20).
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=20))]
        limit: u32,
        /// Print the trace as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Search the archive (through the admin API).
    Archive {
        #[command(flatten)]
        remote: Remote,
        #[command(subcommand)]
        command: ArchiveCommand,
    },
    /// The global field names: list, set, delete (through the admin API).
    Dictionary {
        #[command(flatten)]
        remote: Remote,
        #[command(subcommand)]
        command: DictionaryCommand,
    },
}

/// Which archived letters: every criterion given must hold.
#[derive(Args)]
struct SelectionArgs {
    /// From: an age (`2h`, `3d`) or a time (`2026-11-24T10:00:00Z`).
    #[arg(long)]
    since: String,
    /// Until (exclusive): an age or a time; default now.
    #[arg(long)]
    until: Option<String>,
    /// Only letters of this source topic.
    #[arg(long)]
    topic: Option<String>,
    /// Only letters with this tag.
    #[arg(long)]
    tag: Option<String>,
    /// Only letters this archive pigeon kept.
    #[arg(long)]
    pigeon: Option<String>,
    /// A business key, `userId=42` (also anchorId, roomId); repeat for several.
    #[arg(long = "key", value_name = "FIELD=VALUE")]
    keys: Vec<String>,
}

impl SelectionArgs {
    fn selection(self) -> cli::replay::Selection {
        cli::replay::Selection {
            since: self.since,
            until: self.until,
            topic: self.topic,
            tag: self.tag,
            pigeon: self.pigeon,
            keys: self.keys,
        }
    }
}

#[derive(Args)]
struct ReplayArgs {
    #[command(flatten)]
    selection: Option<SelectionArgs>,
    /// Send every letter, as it was, to this topic.
    #[arg(long, conflicts_with = "through_pigeons")]
    to_topic: Option<String>,
    /// Send every letter through today's pigeons for its topic and tag.
    #[arg(long)]
    through_pigeons: bool,
    /// At most this many letters per second (`500` or `500/s`).
    #[arg(long)]
    rate: Option<String>,
    /// Count and show the first letters; send nothing.
    #[arg(long)]
    dry_run: bool,
    /// Start the job and return, without following it.
    #[arg(long)]
    detach: bool,
}

#[derive(Subcommand)]
enum ReplayCommand {
    /// Replay jobs, newest first.
    List,
    /// One job: where it stands.
    Show {
        /// Job id.
        id: i64,
    },
    /// Cancel a pending or running job.
    Cancel {
        /// Job id.
        id: i64,
    },
}

#[derive(Subcommand)]
enum ArchiveCommand {
    /// Archived letters, oldest first.
    Search {
        #[command(flatten)]
        selection: SelectionArgs,
        /// Letters shown at most.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// One archived letter, whole.
    Show {
        /// Letter id.
        letter_id: String,
    },
}

#[derive(Subcommand)]
enum DictionaryCommand {
    /// List every field.
    List,
    /// Create a field or change one: what you leave out stays as it is.
    Set {
        /// The field name (camelCase).
        name: String,
        /// string, integer, number, boolean, object or array.
        #[arg(long = "type")]
        kind: Option<pigeon_bus::dictionary::FieldType>,
        /// What it means, in one line.
        #[arg(long)]
        description: Option<String>,
        /// Another name it goes by (repeat for several; replaces the old aliases).
        #[arg(long = "alias")]
        aliases: Vec<String>,
    },
    /// Delete a field.
    Delete {
        /// The field name.
        name: String,
    },
    /// Fields the dictionary does not know, seen in letters, per source topic.
    Drift,
}

#[derive(Subcommand)]
enum DeadLettersCommand {
    /// List dead letters, newest first.
    List {
        /// Only this pigeon's.
        #[arg(long)]
        pigeon: Option<String>,
        /// Only in this status: pending, retrying, delivered, parked or discarded.
        #[arg(long)]
        status: Option<String>,
        /// Only of this kind: produce, handler, script, malformed, dictionary or internal.
        #[arg(long)]
        kind: Option<String>,
        /// Only those stored since: an age (2h) or a time (2026-11-23T10:00:00Z).
        #[arg(long)]
        since: Option<String>,
        /// How many to show (1 to 500).
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Show a dead letter and its attempt history.
    Show {
        /// The dead letter's id.
        id: i64,
    },
    /// Redrive pending or parked dead letters now.
    Retry {
        /// Dead letter ids.
        ids: Vec<i64>,
        /// Select by filter instead: pigeon=ID,status=parked,kind=produce,since=2h.
        #[arg(long)]
        filter: Option<String>,
    },
    /// Fix a dead letter's payload (in $EDITOR, or from a file), then redrive it.
    Edit {
        /// The dead letter's id.
        id: i64,
        /// Read the new payload (JSON) from this file instead of opening an editor.
        #[arg(long)]
        payload: Option<PathBuf>,
        /// Replace the payload without retrying.
        #[arg(long)]
        no_retry: bool,
    },
    /// Discard pending or parked dead letters (kept, marked discarded).
    Discard {
        /// Dead letter ids.
        ids: Vec<i64>,
        /// Select by filter instead: pigeon=ID,status=parked,kind=produce,since=2h.
        #[arg(long)]
        filter: Option<String>,
    },
}

#[derive(Subcommand)]
enum TokensCommand {
    /// Create a token and print its value (shown only this once).
    Create {
        /// Unique name; it is the actor in the audit log.
        #[arg(long)]
        name: String,
        /// viewer (reads), operator (changes) or admin (also tokens).
        #[arg(long)]
        role: String,
    },
    /// List tokens.
    List,
    /// Revoke a token.
    Revoke {
        /// The token's name.
        name: String,
    },
}

#[derive(Subcommand)]
enum ScriptsCommand {
    /// Run a script on a sample letter and print the letters it emits (exit 1 on error).
    Test {
        /// The Rhai script.
        #[arg(long)]
        script: PathBuf,
        /// A sample letter: JSON with tag, payload and optionally id, source, key, time and
        /// the pigeon's destinations.
        #[arg(long)]
        letter: PathBuf,
        /// A destination, `module/capability` or `topic#tag`; repeatable. Overrides the
        /// letter file's destinations.
        #[arg(long = "dest")]
        destinations: Vec<String>,
    },
}

#[derive(Subcommand)]
enum RoutesCommand {
    /// List pigeons.
    List,
    /// Write every pigeon to a route file (or standard output).
    Export {
        /// File to write; its extension picks the format.
        #[arg(short = 'o', long)]
        output: Option<PathBuf>,
        /// yaml or toml (default: from the file name, else yaml).
        #[arg(long, value_enum)]
        format: Option<routes::Format>,
    },
    /// Show the diff between a route file and the bus, then apply it atomically.
    Apply {
        /// The route file (.yaml, .yml or .toml).
        #[arg(short = 'f', long)]
        file: PathBuf,
        /// Show the diff only.
        #[arg(long)]
        dry_run: bool,
        /// Also delete pigeons that the file does not list.
        #[arg(long)]
        prune: bool,
        /// Save pigeons whose destinations require fields their source letters do not carry
        /// (the override is audited).
        #[arg(long)]
        force: bool,
        /// yaml or toml (default: from the file name).
        #[arg(long, value_enum)]
        format: Option<routes::Format>,
    },
}

/// Where the admin API is, and the token to use.
#[derive(Args)]
struct Remote {
    /// The bus's admin URL.
    #[arg(long, global = true, env = "PIGEON_URL", default_value = "http://127.0.0.1:7800")]
    url: String,
    /// An API token.
    #[arg(long, global = true, env = "PIGEON_TOKEN", default_value = "", hide_default_value = true)]
    token: String,
}

#[derive(Subcommand)]
enum TopicsCommand {
    /// Create the bus's topics, module topics and pigeon destinations that are missing.
    Ensure {
        #[command(flatten)]
        connect: Connect,
        /// Partitions per topic (default from config, else 16).
        #[arg(long)]
        partitions: Option<i32>,
        /// Replication factor (default from config, else 3).
        #[arg(long)]
        replication: Option<i32>,
        /// A module whose topic `pigeon.module.<NAME>` to create; repeatable.
        #[arg(long = "module")]
        modules: Vec<String>,
    },
}

/// Connection flags shared by the commands that talk to Kafka and the store.
#[derive(Args)]
struct Connect {
    /// Kafka bootstrap servers.
    #[arg(long, env = "PIGEON_BROKERS")]
    brokers: Option<String>,
    /// Database URL: sqlite://PATH or mysql://USER:PASSWORD@HOST:PORT/DB.
    #[arg(long, env = "PIGEON_DATABASE")]
    database: Option<String>,
    /// A librdkafka property, KEY=VALUE; prefix KEY with `consumer.` or `producer.` to set it
    /// on one kind of client only. Repeatable.
    #[arg(short = 'X', value_name = "KEY=VALUE")]
    properties: Vec<String>,
}

impl Connect {
    fn apply(&self, config: &mut BusConfig) -> anyhow::Result<()> {
        if let Some(brokers) = &self.brokers {
            config.kafka.brokers.clone_from(brokers);
        }
        if let Some(database) = &self.database {
            config.store.url.clone_from(database);
        }
        for property in &self.properties {
            let (key, value) =
                property.split_once('=').with_context(|| format!("-X {property}: expected KEY=VALUE"))?;
            let (map, key) = if let Some(key) = key.strip_prefix("consumer.") {
                (&mut config.kafka.consumer, key)
            } else if let Some(key) = key.strip_prefix("producer.") {
                (&mut config.kafka.producer, key)
            } else {
                (&mut config.kafka.common, key)
            };
            map.insert(key.to_owned(), value.to_owned());
        }
        Ok(())
    }
}

/// Counts what each script run holds, so a run is bounded in all (`Limits::max_memory`).
#[global_allocator]
static ALLOC: pigeon_alloc::Counting = pigeon_alloc::Counting;

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let mut config = match &cli.config {
        Some(path) => BusConfig::load(path)?,
        None => BusConfig::default(),
    };
    if let Some(format) = cli.log_format {
        config.log.format = format;
    }
    // Spans are exported by the roles only (`serve`, `dev`), never by a tool's run. Declared
    // before the runtime, so the exporter flushes after the roles stopped.
    let roles = matches!(cli.command, Command::Serve { .. } | Command::Dev { .. });
    let _telemetry =
        pigeon_bus::telemetry::init(config.log.format, &config.tracing, roles).map_err(anyhow::Error::msg)?;
    // Scripts also run on the runtime's threads (archive filters, the API's tests and dry
    // runs): each gets the stack a script's deepest value needs.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(pigeon_bus::script::STACK_SIZE)
        .build()?;
    match cli.command {
        Command::Dev { data_dir, listen, no_demo_traffic } => {
            if let Some(listen) = listen {
                config.admin.listen = listen;
            }
            // The mock cluster is not Send: it lives here, on the main thread, for the whole run.
            let mock = MockCluster::new(1).context("starting the in-process Kafka")?;
            let options = DevOptions { data_dir, demo_traffic: !no_demo_traffic };
            let config = dev::dev_config(config, &mock.bootstrap_servers(), &options);
            config.validate()?;
            let mut wanted = topics::required_topics(&config.topics.modules, &[]);
            wanted.push(dev::DEMO_SOURCE.into());
            for topic in &wanted {
                mock.create_topic(topic, config.topics.partitions, 1)
                    .with_context(|| format!("creating topic {topic}"))?;
            }
            println!("kafka: {}", mock.bootstrap_servers());
            runtime.block_on(dev::run(config, options))
        }
        Command::DevBroker { topics, partitions, brokers } => {
            // Not Send, like `dev`'s: it lives on the main thread until the signal.
            let mock = MockCluster::new(brokers).context("starting the in-process Kafka")?;
            for (topic, count) in &topics {
                let count = if *count == 0 { partitions } else { *count };
                mock.create_topic(topic, count, brokers.min(3))
                    .with_context(|| format!("creating topic {topic} with {count} partitions"))?;
            }
            println!("kafka: {}", mock.bootstrap_servers());
            let cancel = CancellationToken::new();
            runtime.block_on(serve::cancel_on_signal(cancel.clone()));
            drop(mock);
            Ok(())
        }
        Command::Serve { connect, listen, roles } => {
            connect.apply(&mut config)?;
            if !roles.is_empty() {
                config.roles = roles;
            }
            if let Some(listen) = listen {
                config.admin.listen = listen;
            }
            config.validate()?;
            runtime.block_on(async {
                let store = serve::open_store(&config.store.url).await?;
                serve::run(config, store, CancellationToken::new(), |url| println!("admin: {url}")).await
            })
        }
        Command::Migrate { database } => {
            if let Some(database) = database {
                config.store.url = database;
            }
            config.validate()?;
            runtime.block_on(serve::open_store(&config.store.url))?;
            println!("migrations applied to {}", pigeon_bus::config::redact_url(&config.store.url));
            Ok(())
        }
        Command::Tokens { database, command } => {
            if let Some(database) = database {
                config.store.url = database;
            }
            config.validate()?;
            runtime.block_on(async {
                let store = serve::open_store(&config.store.url).await?;
                let actor = cli::local_actor();
                match command {
                    TokensCommand::Create { name, role } => {
                        let role = role.parse().map_err(anyhow::Error::msg)?;
                        let value = cli::tokens::create(store.as_ref(), &name, role, &actor).await?;
                        println!("token: {value}");
                    }
                    TokensCommand::List => print!("{}", cli::tokens::list(store.as_ref()).await?),
                    TokensCommand::Revoke { name } => {
                        cli::tokens::revoke(store.as_ref(), &name, &actor).await?;
                        println!("revoked {name}");
                    }
                }
                Ok(())
            })
        }
        Command::Scripts { command: ScriptsCommand::Test { script, letter, destinations } } => {
            let source =
                std::fs::read_to_string(&script).with_context(|| format!("reading {}", script.display()))?;
            let text =
                std::fs::read_to_string(&letter).with_context(|| format!("reading {}", letter.display()))?;
            let sample: SampleLetter = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a sample letter", letter.display()))?;
            let destinations = destinations
                .iter()
                .map(|d| match d.split_once('#') {
                    Some((topic, tag)) => DestinationSpec::topic(topic, tag),
                    None => DestinationSpec::capability(d),
                })
                .collect::<Vec<_>>();
            let engine = ScriptEngine::new(Limits::default());
            let outputs = dry_run(&engine, &source, &sample, &destinations)?;
            println!("{}", serde_json::to_string_pretty(&outputs)?);
            Ok(())
        }
        Command::Dictionary { remote, command } => runtime.block_on(async {
            let client = Client::new(&remote.url, &remote.token)?;
            match command {
                DictionaryCommand::List => print!("{}", dictionary::list(&client).await?),
                DictionaryCommand::Set { name, kind, description, aliases } => {
                    let change = dictionary::Change { kind, description, aliases };
                    let saved = dictionary::set(&client, &name, change).await?;
                    println!("{} is at version {}", saved.field.name, saved.version);
                }
                DictionaryCommand::Drift => print!("{}", dictionary::drift(&client).await?),
                DictionaryCommand::Delete { name } => {
                    let deleted = dictionary::delete(&client, &name).await?;
                    println!("{} deleted (it was at version {})", deleted.field.name, deleted.version);
                }
            }
            Ok(())
        }),
        Command::Replay { remote, start, command } => runtime.block_on(async {
            let client = Client::new(&remote.url, &remote.token)?;
            let out = match command {
                Some(ReplayCommand::List) => cli::replay::list(&client).await?,
                Some(ReplayCommand::Show { id }) => cli::replay::show(&client, id).await?,
                Some(ReplayCommand::Cancel { id }) => cli::replay::cancel(&client, id).await?,
                None => {
                    let selection = start.selection.context("give --since (and what to replay)")?;
                    let spec = pigeon_bus::archive::ReplaySpec {
                        query: selection.selection().query()?,
                        to_topic: start.to_topic,
                        through_pigeons: start.through_pigeons,
                        rate: start.rate.as_deref().map(cli::replay::parse_rate).transpose()?,
                    };
                    if spec.to_topic.is_none() && !spec.through_pigeons {
                        anyhow::bail!("say where the letters go: --to-topic TOPIC or --through-pigeons");
                    }
                    match start.dry_run {
                        true => cli::replay::dry_run(&client, &spec).await?,
                        false => cli::replay::start(&client, &spec, !start.detach).await?,
                    }
                }
            };
            print!("{out}");
            Ok(())
        }),
        Command::Trace { remote, letter_id, since, until, keys, topic, tag, limit, json } => runtime
            .block_on(async {
                let client = Client::new(&remote.url, &remote.token)?;
                let out = match (letter_id, since) {
                    (Some(id), _) => cli::trace::one(&client, &id, json).await?,
                    (None, Some(since)) => {
                        let selection =
                            cli::replay::Selection { since, until, topic, tag, pigeon: None, keys };
                        cli::trace::many(&client, selection.query()?, limit, json).await?
                    }
                    (None, None) => anyhow::bail!("give a letter id, or --since with --key…"),
                };
                print!("{out}");
                Ok(())
            }),
        Command::Archive { remote, command } => runtime.block_on(async {
            let client = Client::new(&remote.url, &remote.token)?;
            let out = match command {
                ArchiveCommand::Search { selection, limit } => {
                    cli::replay::search(&client, selection.selection().query()?, limit).await?
                }
                ArchiveCommand::Show { letter_id } => cli::replay::show_letter(&client, &letter_id).await?,
            };
            print!("{out}");
            Ok(())
        }),
        Command::Routes { remote, command } => runtime.block_on(async {
            let client = Client::new(&remote.url, &remote.token)?;
            match command {
                RoutesCommand::List => print!("{}", routes::list(&client).await?),
                RoutesCommand::Export { output, format } => {
                    let format = match (format, &output) {
                        (Some(f), _) => f,
                        (None, Some(path)) => routes::Format::of(path)?,
                        (None, None) => routes::Format::Yaml,
                    };
                    let text = routes::export(&client, format).await?;
                    match output {
                        Some(path) => {
                            std::fs::write(&path, text)
                                .with_context(|| format!("writing {}", path.display()))?;
                            println!("exported to {}", path.display());
                        }
                        None => print!("{text}"),
                    }
                }
                RoutesCommand::Apply { file, dry_run, prune, force, format } => {
                    print!("{}", routes::apply(&client, &file, format, dry_run, prune, force).await?);
                }
            }
            Ok(())
        }),
        Command::DeadLetters { remote, command } => runtime.block_on(async {
            let client = Client::new(&remote.url, &remote.token)?;
            match command {
                DeadLettersCommand::List { pigeon, status, kind, since, limit } => {
                    let filter = DeadLetterFilter {
                        pigeon_id: pigeon,
                        status: status.map(|s| s.parse()).transpose().map_err(anyhow::Error::msg)?,
                        error_kind: kind.map(|k| k.parse()).transpose().map_err(anyhow::Error::msg)?,
                        since: since.map(|s| deadletters::parse_since(&s)).transpose()?,
                    };
                    print!("{}", deadletters::list(&client, &filter, limit).await?);
                }
                DeadLettersCommand::Show { id } => print!("{}", deadletters::show(&client, id).await?),
                DeadLettersCommand::Retry { ids, filter } => {
                    let count = deadletters::act(&client, "retry", &ids, filter.as_deref()).await?;
                    println!("{count} dead letter(s) queued for retry");
                }
                DeadLettersCommand::Edit { id, payload, no_retry } => {
                    print!("{}", deadletters::edit(&client, id, payload.as_deref(), !no_retry).await?);
                }
                DeadLettersCommand::Discard { ids, filter } => {
                    let count = deadletters::act(&client, "discard", &ids, filter.as_deref()).await?;
                    println!("{count} dead letter(s) discarded");
                }
            }
            Ok(())
        }),
        Command::Topics { command: TopicsCommand::Ensure { connect, partitions, replication, modules } } => {
            connect.apply(&mut config)?;
            config.topics.modules.extend(modules);
            if let Some(p) = partitions {
                config.topics.partitions = p;
            }
            if let Some(r) = replication {
                config.topics.replication = r;
            }
            config.validate()?;
            runtime.block_on(async {
                // Destinations and sources of stored pigeons too, when a store is reachable.
                let tables = match serve::open_store(&config.store.url).await {
                    Ok(store) => Some(control::every_window(store.as_ref(), &config.sources).await?),
                    Err(e) => {
                        tracing::warn!(error = %e, "no store: creating only the bus and module topics");
                        None
                    }
                };
                let tables: Vec<&RouteTable> =
                    tables.iter().flat_map(|(deliver, archive)| [deliver, archive]).collect();
                let wanted = topics::required_topics(&config.topics.modules, &tables);
                let client = kafka::admin_config(&config.kafka);
                let done =
                    topics::ensure(&client, &wanted, config.topics.partitions, config.topics.replication)
                        .await?;
                for (topic, what) in done {
                    println!("{topic}: {}", what.describe(config.topics.partitions));
                }
                Ok(())
            })
        }
    }
}
