//! The `agentaudit` command line: parses flags and hands over to the library.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use agentaudit::config::{
    Config, InputFormat, Overrides, TopicInput, parse_kafka_option, parse_topic_input,
};
use agentaudit::query::Format;
use agentaudit::traffic::scenario::Scenario;

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
    /// Log lines as text (colour only on a terminal) or as JSON objects,
    /// one per line, for a log shipper.
    #[arg(
        long,
        global = true,
        env = "AGENTAUDIT_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(clap::Args)]
struct KafkaArgs {
    /// Kafka bootstrap servers; without it `serve` starts an embedded broker.
    #[arg(long, env = "AGENTAUDIT_BROKERS")]
    brokers: Option<String>,
    #[arg(long, env = "AGENTAUDIT_TOPIC")]
    topic: Option<String>,
    /// How the topic's messages are encoded: v1 (JSON events), or the
    /// OpenTelemetry Collector's kafka exporter's otlp_proto or otlp_json.
    #[arg(long, env = "AGENTAUDIT_INPUT_FORMAT")]
    input_format: Option<InputFormat>,
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
        /// Another topic to read at once, with its format: TOPIC=FORMAT,
        /// e.g. --extra-topic otlp_spans=otlp_proto (repeatable).
        #[arg(long = "extra-topic", value_parser = parse_topic_input)]
        extra_topics: Vec<TopicInput>,
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
        /// Plant a scenario in the demo traffic (repeatable; see `gen`). The
        /// demo then detects on 5-s buckets so it alerts within minutes.
        #[arg(long = "scenario", value_parser = Scenario::parse, requires = "demo")]
        scenarios: Vec<Scenario>,
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
        /// Write the result to this file, whole or not at all (a temporary
        /// file beside it, renamed over it), instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
        /// A local directory or s3://bucket/prefix (AWS_* settings apply).
        #[arg(long, env = "AGENTAUDIT_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
        /// Read `[sink.object_store]` settings from this config file.
        #[arg(long, env = "AGENTAUDIT_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Write the responder's report of one alert (or of a tenant or agent
    /// around a time) as Markdown and self-contained HTML, each section
    /// with the SQL that made it.
    Incident {
        /// The alert's id: `alert_id` in the alerts table, and in the
        /// annotations of what Alertmanager shows.
        #[arg(required_unless_present = "tenant")]
        alert_id: Option<String>,
        /// Instead of an alert: this tenant…
        #[arg(long, conflicts_with = "alert_id", requires = "around")]
        tenant: Option<String>,
        /// …or one of its agents…
        #[arg(long, requires = "tenant")]
        agent: Option<String>,
        /// …around this time (RFC 3339).
        #[arg(long, requires = "tenant")]
        around: Option<String>,
        /// Minutes before and after the alert's window the report covers.
        #[arg(long, default_value_t = 30)]
        margin_minutes: i64,
        /// Days before that which say what is usual.
        #[arg(long, default_value_t = 7)]
        history_days: i64,
        /// Where the .md and .html files go.
        #[arg(long, default_value = ".")]
        out_dir: PathBuf,
        #[arg(long, env = "AGENTAUDIT_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
        /// Read `[sink.object_store]` settings from this config file.
        #[arg(long, env = "AGENTAUDIT_CONFIG")]
        config: Option<PathBuf>,
    },
    /// The kill switch's receiver: take Alertmanager webhooks and run a
    /// command per firing alert with the agent and credential as its last
    /// two arguments; each action becomes a row of the `actions` table.
    RevokeHook {
        /// Address to listen on; loopback unless you say otherwise.
        #[arg(long, default_value = "127.0.0.1:9466")]
        listen: std::net::SocketAddr,
        /// The program to run, e.g. a script calling your identity
        /// provider's CLI; never run through a shell.
        #[arg(long)]
        command: PathBuf,
        /// Arguments before AGENT CREDENTIAL (repeatable).
        #[arg(long = "command-arg")]
        command_args: Vec<String>,
        /// The shared secret Alertmanager sends as `Authorization: Bearer`.
        #[arg(long, env = "AGENTAUDIT_HOOK_SECRET", hide_env_values = true)]
        secret: String,
        /// A command still running after this many seconds is killed.
        #[arg(long, default_value_t = 30)]
        timeout_secs: u64,
        #[arg(long, env = "AGENTAUDIT_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
        /// Read `[sink.object_store]` settings from this config file.
        #[arg(long, env = "AGENTAUDIT_CONFIG")]
        config: Option<PathBuf>,
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
        /// Plant a scenario (repeatable). Mixed into a share of the traffic:
        /// injection_spike, exfiltration, runaway_loop, unapproved_tier_a,
        /// unregistered_agent, shell_in_production, secret_in_input,
        /// credential_reuse, unpinned_mcp. Timed, with --hard-cases:
        /// sustained_shift, injection_sequence, low_volume_failures,
        /// slow_climb, tenant_silence.
        #[arg(long = "scenario", value_parser = Scenario::parse)]
        scenarios: Vec<Scenario>,
        /// Scenarios start at this event time (RFC 3339) instead of at an
        /// event number; with --hard-cases the default is 9 days 10 hours
        /// after --start.
        #[arg(long, conflicts_with = "scenario_start")]
        scenario_at: Option<String>,
        /// Add the hard cases: weekends at 40 %, an hourly batch job, a tenant
        /// onboarding a day before the scenarios, rare tools, low-volume
        /// agents, marked results followed by ordinary calls, security
        /// research quoting attack phrases.
        #[arg(long)]
        hard_cases: bool,
        /// Events per second of event time at the day's peak.
        #[arg(long, default_value_t = 100.0)]
        peak_rate: f64,
        /// With --jsonl: stop when event time reaches this (RFC 3339), even
        /// before --events.
        #[arg(long, requires = "jsonl")]
        until: Option<String>,
        /// Scenarios start at this event number (default: 70 % of --events).
        #[arg(long)]
        scenario_start: Option<u64>,
        /// Scenarios last this many events (default: 5 % of --events).
        #[arg(long)]
        scenario_events: Option<u64>,
        /// Write the ground truth (one JSON line per scenario) here.
        #[arg(long)]
        truth_out: Option<PathBuf>,
        /// Write the inventory/policy under which the benign traffic complies.
        #[arg(long)]
        policy_out: Option<PathBuf>,
        /// Event time of the first event (RFC 3339; default an hour ago).
        #[arg(long)]
        start: Option<String>,
        /// Events 10 ms apart all day instead of following a working day.
        #[arg(long)]
        flat: bool,
    },
    /// Replay history through the detectors in event time; write per-bucket
    /// scores and the alerts that would have fired (CSV and Parquet).
    Backtest {
        /// A JSONL file of v1 events (or use --data-dir with --from/--to).
        #[arg(long)]
        jsonl: Option<PathBuf>,
        #[arg(long, env = "AGENTAUDIT_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
        /// Start of the stored range (RFC 3339), with --to.
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        to: Option<String>,
        #[arg(long, env = "AGENTAUDIT_CONFIG")]
        config: Option<PathBuf>,
        #[arg(long, env = "AGENTAUDIT_POLICY")]
        policy: Option<PathBuf>,
        /// Where scores.csv, alerts.csv and alerts.parquet go.
        #[arg(long, default_value = "./backtest")]
        out: PathBuf,
        /// Ground truth from `gen --truth-out`: print recall and time to detect.
        #[arg(long)]
        truth: Option<PathBuf>,
        /// With --truth: judge alerts from the start of this UTC day (RFC 3339)
        /// on; earlier ones are the learning period's, counted apart.
        #[arg(long, requires = "truth")]
        evaluate_from: Option<String>,
    },
    /// End-to-end benchmark on the embedded broker: raw consume vs pipeline.
    Bench {
        /// Run against this Kafka-protocol broker (e.g. tansu) instead of the
        /// embedded one; a fresh topic is created for the run.
        #[arg(long)]
        brokers: Option<String>,
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        /// The embedded broker keeps only the newest 5 MiB of a partition, so
        /// a million ~500 B events need 128 partitions to stay whole.
        #[arg(long, default_value_t = 128)]
        partitions: i32,
        /// Where the benchmark writes its dataset (emptied first). An
        /// `s3://bucket/prefix` URL (AWS_* settings) is measured beside a
        /// local-disk run, under a prefix of the run's own, removed after.
        #[arg(long, default_value = "./target/bench-data")]
        data_dir: PathBuf,
        #[arg(long, default_value_t = 512)]
        memory_budget_mib: usize,
        /// Also measure the same events shipped as OpenTelemetry spans in
        /// this format (otlp_proto or otlp_json), in spans per second beside
        /// the v1 figure.
        #[arg(long, default_value = "v1")]
        input_format: InputFormat,
        /// Run the pipeline with detection switched off (for the comparison).
        #[arg(long)]
        no_detect: bool,
        /// Also measure baseline memory per key with this many keys.
        #[arg(long, default_value_t = 1_000_000)]
        baseline_keys: usize,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logs(cli.log_format);
    match cli.command {
        Command::Serve {
            config,
            kafka,
            extra_topics,
            group,
            data_dir,
            listen,
            hash_key,
            policy,
            alertmanager_url,
            demo,
            demo_rate,
            scenarios,
        } => {
            let cfg = Config::load(
                config.as_deref(),
                Overrides {
                    brokers: kafka.brokers,
                    topic: kafka.topic,
                    input_format: kafka.input_format,
                    extra_topics,
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
            let demo = demo.then_some(agentaudit::pipeline::Demo {
                rate: demo_rate,
                scenarios,
            });
            runtime.block_on(agentaudit::pipeline::serve(cfg, demo))?;
        }
        Command::Query {
            sql,
            file,
            params,
            format,
            out,
            data_dir,
            config,
        } => {
            let store = match &config {
                Some(p) => Config::from_file(p)?.sink.object_store,
                None => Default::default(),
            };
            let lake = agentaudit::lake::Lake::open(&data_dir, &store)?;
            let sql = match (sql, file) {
                (Some(s), None) => s,
                (None, Some(f)) => agentaudit::query::read_query_file(&f)?,
                _ => anyhow::bail!("give the SQL text or --file NAME.sql"),
            };
            let params = agentaudit::query::parse_params(&params)?;
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            if out.is_none() && format.is_binary() && std::io::stdout().is_terminal() {
                anyhow::bail!(
                    "--format {format:?} is binary: give --out FILE, or redirect standard output"
                );
            }
            let batches = runtime.block_on(async {
                let ctx = agentaudit::query::session(&lake).await?;
                agentaudit::query::run(&ctx, &sql, &params).await
            })?;
            match &out {
                Some(path) => agentaudit::query::write_file(&batches, format, path)?,
                None => {
                    let mut stdout = std::io::stdout().lock();
                    agentaudit::query::write(&batches, format, &mut stdout)?;
                    stdout.flush()?;
                }
            }
        }
        Command::Incident {
            alert_id,
            tenant,
            agent,
            around,
            margin_minutes,
            history_days,
            out_dir,
            data_dir,
            config,
        } => {
            use agentaudit::incident::{Span, Subject};
            let subject = match (alert_id, tenant, around) {
                (Some(id), _, _) => Subject::Alert(id),
                (None, Some(tenant), Some(at)) => Subject::Around {
                    tenant,
                    agent,
                    at_ms: chrono::DateTime::parse_from_rfc3339(&at)
                        .with_context(|| format!("--around {at}: expected RFC 3339"))?
                        .timestamp_millis(),
                },
                _ => anyhow::bail!("give an ALERT_ID, or --tenant with --around"),
            };
            anyhow::ensure!(
                margin_minutes > 0 && history_days > 0,
                "--margin-minutes and --history-days must be positive"
            );
            let span = Span {
                margin_ms: margin_minutes * 60_000,
                history_ms: history_days * 86_400_000,
            };
            let store = match &config {
                Some(p) => Config::from_file(p)?.sink.object_store,
                None => Default::default(),
            };
            let lake = agentaudit::lake::Lake::open(&data_dir, &store)?;
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            let report = runtime.block_on(async {
                let ctx = agentaudit::query::session(&lake).await?;
                agentaudit::incident::build(&ctx, &subject, span).await
            })?;
            let stem = agentaudit::incident::file_stem(&subject);
            for (ext, text) in [
                ("md", agentaudit::incident::markdown(&report)),
                ("html", agentaudit::incident::html(&report)),
            ] {
                let path = out_dir.join(format!("{stem}.{ext}"));
                agentaudit::query::atomically(&path, |w| Ok(w.write_all(text.as_bytes())?))?;
                println!("{}", path.display());
            }
        }
        Command::RevokeHook {
            listen,
            command,
            command_args,
            secret,
            timeout_secs,
            data_dir,
            config,
        } => {
            anyhow::ensure!(
                secret.len() >= 16,
                "--secret (AGENTAUDIT_HOOK_SECRET) must be at least 16 characters"
            );
            anyhow::ensure!(
                command.is_file(),
                "--command {}: no such program",
                command.display()
            );
            let store = match &config {
                Some(p) => Config::from_file(p)?.sink.object_store,
                None => Default::default(),
            };
            let lake = agentaudit::lake::Lake::open(&data_dir, &store)?;
            let cfg = agentaudit::hook::HookConfig {
                listen,
                command,
                command_args,
                secret,
                timeout: std::time::Duration::from_secs(timeout_secs.max(1)),
                lake,
            };
            let metrics = std::sync::Arc::new(agentaudit::metrics::Metrics::new());
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            runtime.block_on(agentaudit::hook::serve(cfg, metrics))?;
        }
        Command::Gen {
            kafka,
            jsonl,
            events,
            seed,
            secret_ratio,
            malformed_ratio,
            scenarios,
            scenario_start,
            scenario_events,
            truth_out,
            policy_out,
            start,
            flat,
            scenario_at,
            hard_cases,
            peak_rate,
            until,
        } => {
            let rfc3339 = |flag: &str, s: &str| {
                chrono::DateTime::parse_from_rfc3339(s)
                    .map(|t| t.timestamp_millis())
                    .with_context(|| format!("{flag} `{s}` is not an RFC 3339 time"))
            };
            let start_ms = match start {
                Some(s) => rfc3339("--start", &s)?,
                None => chrono::Utc::now().timestamp_millis() - 3_600_000,
            };
            let scenario_at_ms = scenario_at
                .map(|s| rfc3339("--scenario-at", &s))
                .transpose()?
                .or(hard_cases
                    .then_some(start_ms + agentaudit::traffic::hard_cases::SCENARIOS_AFTER_MS));
            let until_ms = until.map(|s| rfc3339("--until", &s)).transpose()?;
            if let Some(s) = scenarios.iter().find(|s| s.is_timed() && !hard_cases) {
                anyhow::bail!(
                    "scenario `{}` plays out on the hard cases: add --hard-cases",
                    s.name()
                );
            }
            anyhow::ensure!(
                peak_rate.is_finite() && peak_rate > 0.0,
                "--peak-rate must be a positive number of events per second"
            );
            let opts = agentaudit::traffic::GenOptions {
                start_ms,
                daily_rhythm: !flat,
                peak_rate,
                hard_cases,
                scenario_at_ms,
                seed,
                secret_ratio,
                malformed_ratio,
                scenario_start: match (scenario_at_ms, hard_cases) {
                    (Some(_), _) | (None, true) => u64::MAX,
                    (None, false) => scenario_start.unwrap_or(events / 10 * 7),
                },
                scenario_events: scenario_events.unwrap_or((events / 20).max(1)),
                scenarios,
            };
            if let Some(path) = &policy_out {
                std::fs::write(path, agentaudit::traffic::scenario::benign_policy_toml())
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            let mut g = agentaudit::traffic::Generator::new(opts);
            let n = match jsonl {
                Some(path) => agentaudit::traffic::write_jsonl(&path, &mut g, events, until_ms)?,
                None => {
                    let brokers = kafka
                        .brokers
                        .context("--brokers (or AGENTAUDIT_BROKERS) is required to produce")?;
                    let topic = kafka.topic.unwrap_or_else(|| "agent-events".into());
                    let producer = agentaudit::traffic::producer(&brokers, &kafka.kafka_option)?;
                    let stop = std::sync::atomic::AtomicBool::new(false);
                    let pace = agentaudit::traffic::Pace {
                        count: Some(events),
                        rate: None,
                        keyed: true,
                        format: kafka.input_format.unwrap_or_default(),
                    };
                    agentaudit::traffic::produce(&producer, &topic, &mut g, pace, &stop)?
                }
            };
            eprintln!("generated {n} events");
            if let Some(path) = &truth_out {
                let mut text = String::new();
                for t in g.ground_truth() {
                    text.push_str(&serde_json::to_string(&t)?);
                    text.push('\n');
                }
                std::fs::write(path, text)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
        Command::Backtest {
            jsonl,
            data_dir,
            from,
            to,
            config,
            policy,
            out,
            truth,
            evaluate_from,
        } => {
            use agentaudit::detect::backtest;
            let evaluate_from_day = evaluate_from
                .map(|s| {
                    chrono::DateTime::parse_from_rfc3339(&s)
                        .map(|d| d.timestamp_millis().div_euclid(86_400_000))
                        .with_context(|| format!("--evaluate-from `{s}` is not an RFC 3339 time"))
                })
                .transpose()?;
            let mut cfg = match &config {
                Some(p) => Config::from_file(p)?,
                None => Config::default(),
            };
            if policy.is_some() {
                cfg.detect.policy_file = policy;
            }
            cfg.validate()?;
            let input = match (jsonl, from, to) {
                (Some(path), None, None) => backtest::Input::Jsonl(path),
                (None, Some(f), Some(t)) => {
                    let ms = |s: &str| {
                        chrono::DateTime::parse_from_rfc3339(s)
                            .map(|d| d.timestamp_millis())
                            .with_context(|| format!("`{s}` is not an RFC 3339 time"))
                    };
                    backtest::Input::Dataset {
                        lake: agentaudit::lake::Lake::open(&data_dir, &cfg.sink.object_store)?,
                        from_ms: ms(&f)?,
                        to_ms: ms(&t)?,
                    }
                }
                _ => anyhow::bail!("give --jsonl FILE, or --from and --to over --data-dir"),
            };
            let outcome = backtest::run(&cfg, &input, &out)?;
            backtest::write_alerts(&outcome, &out)?;
            println!(
                "replayed {} events ({} not valid v1, skipped; {} sorted runs spilled): {} bucket scores, {} alerts, written to {}",
                outcome.events,
                outcome.skipped,
                outcome.spilled_runs,
                outcome.scores,
                outcome.alerts.len(),
                out.display()
            );
            if let Some(path) = truth {
                let truth = backtest::read_truth(&path)?;
                let bucket_ms = cfg.detect.bucket_secs as f64 * 1000.0;
                print!(
                    "{}",
                    backtest::evaluation_report(&outcome, &truth, bucket_ms, evaluate_from_day)
                );
            }
        }
        Command::Bench {
            brokers,
            events,
            partitions,
            data_dir,
            memory_budget_mib,
            input_format,
            no_detect,
            baseline_keys,
        } => {
            let report = agentaudit::bench::run(&agentaudit::bench::BenchOptions {
                brokers,
                events,
                partitions,
                data_dir,
                memory_budget_bytes: memory_budget_mib * 1024 * 1024,
                detect: !no_detect,
                object_store: Default::default(),
                input_format,
            })?;
            println!("{report}");
            if !no_detect {
                let ns = agentaudit::bench::detect_cost(200_000);
                println!(
                    "detection alone             {ns:.0} ns/event (200000 events, benign inventory)"
                );
            }
            if baseline_keys > 0 {
                let (per_key, rss_per_key) = agentaudit::bench::baseline_memory(baseline_keys);
                println!(
                    "baseline memory             {per_key:.1} B/key by table size, {rss_per_key:.1} B/key by RSS growth ({baseline_keys} keys)"
                );
            }
        }
    }
    Ok(())
}

/// Logs go to standard error: as text, coloured only when that is a
/// terminal (a file or a pipe gets no escape codes), or as JSON lines.
/// Events carry no payload text either way: decode and redact log names
/// and limits only.
fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("AGENTAUDIT_LOG")
        .unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().with_current_span(false).init(),
    }
}
