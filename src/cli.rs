//! The shape of the `agentaudit` command line: its subcommands and flags,
//! with their help texts, as clap parses them. `main.rs` hands each to the
//! library.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use agentaudit::config::{InputFormat, TopicInput, parse_kafka_option, parse_topic_input};
use agentaudit::query::Format;
use agentaudit::traffic::scenario::Scenario;

#[derive(Parser)]
#[command(
    name = "agentaudit",
    version,
    about = "Audit trail, redaction and SQL for AI agent tool calls shipped through Kafka"
)]
pub struct Cli {
    /// Log lines as text (colour only on a terminal) or as JSON objects,
    /// one per line, for a log shipper.
    #[arg(
        long,
        global = true,
        env = "AGENTAUDIT_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(clap::Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers; without it `serve` starts an embedded broker.
    #[arg(long, env = "AGENTAUDIT_BROKERS")]
    pub brokers: Option<String>,
    #[arg(long, env = "AGENTAUDIT_TOPIC")]
    pub topic: Option<String>,
    /// How the topic's messages are encoded: v1 (JSON events), or the
    /// OpenTelemetry Collector's kafka exporter's otlp_proto or otlp_json.
    #[arg(long, env = "AGENTAUDIT_INPUT_FORMAT")]
    pub input_format: Option<InputFormat>,
    /// librdkafka property passed through, e.g. -X security.protocol=SASL_SSL.
    #[arg(short = 'X', value_parser = parse_kafka_option)]
    pub kafka_option: Vec<(String, String)>,
}

#[derive(Subcommand)]
pub enum Command {
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
        /// With --format csv: write cells as stored, even those a
        /// spreadsheet would run as a formula (by default they get a
        /// leading `'`).
        #[arg(long)]
        csv_raw: bool,
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
    /// The kill switch's receiver: take Alertmanager webhooks and, per firing
    /// alert about an agent the inventory lists, run a command with
    /// `-- AGENT CREDENTIAL…` (the inventory's id and credentials, never
    /// what the events said); each action becomes rows of the `actions` table.
    RevokeHook {
        /// Address to listen on; loopback unless you say otherwise (then put
        /// it behind a TLS proxy).
        #[arg(long, default_value = "127.0.0.1:9466")]
        listen: std::net::SocketAddr,
        /// The inventory and policy file (as `serve --policy`): the only
        /// source of which agents may be revoked and with which credentials.
        #[arg(long, env = "AGENTAUDIT_POLICY")]
        policy: PathBuf,
        /// The program to run, e.g. a script calling your identity
        /// provider's CLI; never run through a shell.
        #[arg(long)]
        command: PathBuf,
        /// Arguments before `-- AGENT CREDENTIAL…` (repeatable).
        #[arg(long = "command-arg")]
        command_args: Vec<String>,
        /// A variable of the hook's environment to pass to the command
        /// (repeatable); the rest are cleared but PATH, HOME, LANG, LC_ALL, TZ.
        #[arg(long = "pass-env")]
        pass_env: Vec<String>,
        /// A file holding the shared secret Alertmanager sends as
        /// `Authorization: Bearer` (or set AGENTAUDIT_HOOK_SECRET).
        #[arg(long)]
        secret_file: Option<PathBuf>,
        /// Deprecated: shows in `ps`. Use --secret-file or AGENTAUDIT_HOOK_SECRET.
        #[arg(long, hide = true)]
        secret: Option<String>,
        /// A command still running after this many seconds is killed, with
        /// its whole process group.
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
    /// Evaluate detection on randomized worlds: each seed draws its keys'
    /// rates, rhythms, noise, jobs, ramps, history and attacks; prints
    /// recall by cell, false alerts per 1,000 key-days and alert rows per
    /// incident. Seeds from 10000 on are the test set: report, never tune.
    Eval {
        /// Seeds, half-open: 1..40 (training), 10000..10040 (test).
        #[arg(long, default_value = "1..40")]
        seeds: String,
        /// `[detect]` settings to evaluate (defaults otherwise).
        #[arg(long, env = "AGENTAUDIT_CONFIG")]
        config: Option<PathBuf>,
        /// Also write every seed's result as JSON here.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Narrow the draw's highest rate per key (calls a minute), for a
        /// quick run; the evaluation's own range is 0.02-500.
        #[arg(long, default_value_t = 500.0)]
        max_rate: f64,
        /// Narrow the draw's longest history (days), for a quick run.
        #[arg(long, default_value_t = 21)]
        max_history_days: u32,
        /// Run the seeds once as configured, then once with each mechanism
        /// of the frequency model switched off, and print one row per run:
        /// what each mechanism earns.
        #[arg(long)]
        ablation: bool,
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
