//! The `agentaudit` command line: parses flags and hands over to the library.

use std::io::{IsTerminal, Write};

use anyhow::Context;
use clap::Parser;

use agentaudit::config::{Config, Overrides};

mod cli;
use cli::{Cli, Command, LogFormat};

// The pipeline allocates and frees many small strings per event across
// threads (decoded on one, freed after the flush on another); glibc's malloc
// spent a fifth of the flusher's time consolidating them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
            // Before any thread exists, so that every thread inherits it.
            agentaudit::pipeline::hold_stop_signals();
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
            csv_raw,
            out,
            data_dir,
            config,
        } => {
            let format = match format {
                agentaudit::query::Format::Csv if csv_raw => agentaudit::query::Format::CsvRaw,
                f => f,
            };
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
            std::fs::create_dir_all(&out_dir)
                .with_context(|| format!("creating --out-dir {}", out_dir.display()))?;
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
            policy,
            command,
            command_args,
            pass_env,
            secret_file,
            secret,
            timeout_secs,
            data_dir,
            config,
        } => {
            let secret = hook_secret(secret_file.as_deref(), secret)?;
            anyhow::ensure!(
                command.is_file(),
                "--command {}: no such program",
                command.display()
            );
            let policy_file = policy;
            let policy = agentaudit::detect::policy::Policy::load(&policy_file)?;
            let store = match &config {
                Some(p) => Config::from_file(p)?.sink.object_store,
                None => Default::default(),
            };
            let lake = agentaudit::lake::Lake::open(&data_dir, &store)?;
            let cfg = agentaudit::hook::HookConfig {
                listen,
                command,
                command_args,
                pass_env,
                secret,
                timeout: std::time::Duration::from_secs(timeout_secs.max(1)),
                lake,
                policy: std::sync::Arc::new(policy),
                policy_file: Some(policy_file),
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
        Command::Eval {
            seeds,
            config,
            out,
            max_rate,
            max_history_days,
            ablation,
        } => {
            let cfg = match &config {
                Some(p) => Config::from_file(p)?,
                None => Config::default(),
            };
            cfg.validate()?;
            let seeds = agentaudit::eval::parse_seeds(&seeds).map_err(anyhow::Error::msg)?;
            anyhow::ensure!(
                max_rate > 0.02 && max_history_days >= 1,
                "--max-rate must be above 0.02 and --max-history-days at least 1"
            );
            let ranges = agentaudit::eval::Ranges {
                max_rate,
                max_history_days,
                ..Default::default()
            };
            if seeds.start < agentaudit::eval::TEST_SEEDS
                && seeds.end > agentaudit::eval::TEST_SEEDS
            {
                eprintln!(
                    "agentaudit eval: the range mixes training and test seeds (test from {})",
                    agentaudit::eval::TEST_SEEDS
                );
            }
            if ablation {
                let rows = agentaudit::eval::ablation(seeds, ranges, &cfg.detect, |name| {
                    eprintln!("agentaudit eval: ablation run `{name}`");
                });
                print!("{rows}");
                return Ok(());
            }
            let report = agentaudit::eval::run(seeds, ranges, &cfg.detect, |r| {
                eprintln!(
                    "seed {}: {} days of history, {} calls, {}/{} attacks detected, {} false alerts",
                    r.seed,
                    r.history_days,
                    r.events,
                    r.attacks.iter().filter(|a| a.detected).count(),
                    r.attacks.len(),
                    r.false_alerts.len()
                );
            });
            print!("{report}");
            if let Some(path) = out {
                let json = serde_json::to_vec_pretty(&report).context("writing the report")?;
                agentaudit::query::atomically(&path, |w| Ok(w.write_all(&json)?))?;
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

/// The revoke-hook's shared secret: from `--secret-file`, else the
/// environment, else the deprecated flag (which `ps` shows), at least 16
/// characters.
fn hook_secret(file: Option<&std::path::Path>, flag: Option<String>) -> anyhow::Result<String> {
    let secret = if let Some(path) = file {
        std::fs::read_to_string(path)
            .with_context(|| format!("--secret-file {}", path.display()))?
            .trim_end_matches(['\n', '\r'])
            .to_owned()
    } else if let Ok(s) = std::env::var("AGENTAUDIT_HOOK_SECRET") {
        s
    } else if let Some(s) = flag {
        eprintln!(
            "agentaudit revoke-hook: --secret is deprecated (every user sees it in `ps`); \
             use --secret-file or AGENTAUDIT_HOOK_SECRET"
        );
        s
    } else {
        anyhow::bail!(
            "revoke-hook needs a shared secret: --secret-file FILE or AGENTAUDIT_HOOK_SECRET"
        );
    };
    anyhow::ensure!(
        secret.chars().count() >= 16,
        "the revoke-hook's shared secret must be at least 16 characters"
    );
    Ok(secret)
}
