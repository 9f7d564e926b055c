//! The `agentaudit` command line: parses flags and hands over to the library.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use agentaudit::config::{Config, Overrides, parse_kafka_option};
use agentaudit::query::Format;

// The pipeline allocates and frees many small strings per event across
// threads (decoded on one, freed after the flush on another); glibc's malloc
// spent a fifth of the flusher's time consolidating them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "agentaudit",
    version,
    about = "Audit trail, redaction and SQL for AI agent tool calls shipped through Kafka"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct KafkaArgs {
    /// Kafka bootstrap servers; without it `serve` starts an embedded broker.
    #[arg(long, env = "AGENTAUDIT_BROKERS")]
    brokers: Option<String>,
    #[arg(long, env = "AGENTAUDIT_TOPIC")]
    topic: Option<String>,
    /// librdkafka property passed through, e.g. -X security.protocol=SASL_SSL.
    #[arg(short = 'X', value_parser = parse_kafka_option)]
    kafka_option: Vec<(String, String)>,
}

#[derive(Subcommand)]
enum Command {
    /// Consume events, redact them and write Parquet; serve /metrics.
    Serve {
        #[arg(long, env = "AGENTAUDIT_CONFIG")]
        config: Option<PathBuf>,
        #[command(flatten)]
        kafka: KafkaArgs,
        #[arg(long, env = "AGENTAUDIT_GROUP")]
        group: Option<String>,
        #[arg(long, env = "AGENTAUDIT_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Address of /metrics, /healthz and /readyz.
        #[arg(long, env = "AGENTAUDIT_LISTEN")]
        listen: Option<String>,
        #[arg(long, env = "AGENTAUDIT_REDACT_HASH_KEY", hide_env_values = true)]
        hash_key: Option<String>,
        /// The inventory and policy file (see policy.example.toml).
        #[arg(long, env = "AGENTAUDIT_POLICY")]
        policy: Option<PathBuf>,
        /// Push alerts to this Alertmanager (http://host:9093).
        #[arg(long, env = "AGENTAUDIT_ALERTMANAGER_URL")]
        alertmanager_url: Option<String>,
        /// Also produce realistic demo traffic into the topic.
        #[arg(long)]
        demo: bool,
        /// Events per second of demo traffic.
        #[arg(long, default_value_t = 200)]
        demo_rate: u32,
    },
    /// Run read-only SQL over the dataset.
    Query {
        /// The SQL text (or use --file).
        sql: Option<String>,
        /// A named query file such as queries/tenant_timeline.sql.
        #[arg(long, conflicts_with = "sql")]
        file: Option<PathBuf>,
        /// Bind $NAME in the query: --param tenant=acme.
        #[arg(long = "param")]
        params: Vec<String>,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
        #[arg(long, env = "AGENTAUDIT_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
    },
    /// Produce realistic synthetic agent traffic to a topic or a JSONL file.
    Gen {
        #[command(flatten)]
        kafka: KafkaArgs,
        /// Write JSON lines here instead of producing to Kafka.
        #[arg(long, conflicts_with = "brokers")]
        jsonl: Option<PathBuf>,
        #[arg(long, default_value_t = 10_000)]
        events: u64,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        #[arg(long, default_value_t = 0.02)]
        secret_ratio: f64,
        #[arg(long, default_value_t = 0.0)]
        malformed_ratio: f64,
    },
    /// End-to-end benchmark on the embedded broker: raw consume vs pipeline.
    Bench {
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        /// The embedded broker keeps only the newest 5 MiB of a partition, so
        /// a million ~500 B events need 128 partitions to stay whole.
        #[arg(long, default_value_t = 128)]
        partitions: i32,
        /// Where the benchmark writes its dataset (emptied first).
        #[arg(long, default_value = "./target/bench-data")]
        data_dir: PathBuf,
        #[arg(long, default_value_t = 512)]
        memory_budget_mib: usize,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("AGENTAUDIT_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            config,
            kafka,
            group,
            data_dir,
            listen,
            hash_key,
            policy,
            alertmanager_url,
            demo,
            demo_rate,
        } => {
            let cfg = Config::load(
                config.as_deref(),
                Overrides {
                    brokers: kafka.brokers,
                    topic: kafka.topic,
                    group,
                    kafka_options: kafka.kafka_option,
                    data_dir,
                    listen,
                    hash_key,
                    policy_file: policy,
                    alertmanager_url,
                },
            )?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            let demo = demo.then_some(demo_rate);
            runtime.block_on(agentaudit::pipeline::serve(cfg, demo))?;
        }
        Command::Query {
            sql,
            file,
            params,
            format,
            data_dir,
        } => {
            let sql = match (sql, file) {
                (Some(s), None) => s,
                (None, Some(f)) => agentaudit::query::read_query_file(&f)?,
                _ => anyhow::bail!("give the SQL text or --file NAME.sql"),
            };
            let params = agentaudit::query::parse_params(&params)?;
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            let out = runtime.block_on(async {
                let ctx = agentaudit::query::session(&data_dir).await?;
                let batches = agentaudit::query::run(&ctx, &sql, &params).await?;
                agentaudit::query::render(&batches, format)
            })?;
            print!("{out}");
        }
        Command::Gen {
            kafka,
            jsonl,
            events,
            seed,
            secret_ratio,
            malformed_ratio,
        } => {
            let opts = agentaudit::traffic::GenOptions {
                seed,
                secret_ratio,
                malformed_ratio,
                ..Default::default()
            };
            let n = match jsonl {
                Some(path) => agentaudit::traffic::write_jsonl(&path, opts, events)?,
                None => {
                    let brokers = kafka
                        .brokers
                        .context("--brokers (or AGENTAUDIT_BROKERS) is required to produce")?;
                    let topic = kafka.topic.unwrap_or_else(|| "agent-events".into());
                    let producer = agentaudit::traffic::producer(&brokers, &kafka.kafka_option)?;
                    let mut g = agentaudit::traffic::Generator::new(opts);
                    let stop = std::sync::atomic::AtomicBool::new(false);
                    let pace = agentaudit::traffic::Pace {
                        count: Some(events),
                        rate: None,
                        keyed: true,
                    };
                    agentaudit::traffic::produce(&producer, &topic, &mut g, pace, &stop)?
                }
            };
            eprintln!("generated {n} events");
        }
        Command::Bench {
            events,
            partitions,
            data_dir,
            memory_budget_mib,
        } => {
            let report = agentaudit::bench::run(&agentaudit::bench::BenchOptions {
                events,
                partitions,
                data_dir,
                memory_budget_bytes: memory_budget_mib * 1024 * 1024,
            })?;
            println!("{report}");
        }
    }
    Ok(())
}
