//! The `serve` command owns a running process: the embedded broker when no
//! brokers are configured, the HTTP surface, the pipeline, the demo traffic,
//! signals (SIGINT/SIGTERM stop, SIGHUP reloads the policy) and a stop
//! bounded by `serve.shutdown_timeout_secs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::{PipelineError, reload_policy, start};
use crate::config::Config;
use crate::error::ConfigError;
use crate::metrics::Metrics;

/// `agentaudit serve`: starts the embedded broker when no brokers are
/// configured, the HTTP surface, the pipeline and (with `demo_rate`) the demo
/// traffic generator; runs until SIGINT or SIGTERM, then flushes, commits
/// and returns.
/// Demo traffic for `serve --demo`.
pub struct Demo {
    pub rate: u32,
    pub scenarios: Vec<crate::traffic::scenario::Scenario>,
}

/// Demo events advance event time 10 ms each; scenarios start after this
/// many, once 5-s baselines are warm.
const DEMO_SCENARIO_START: u64 = 12_000;

pub async fn serve(mut cfg: Config, demo: Option<Demo>) -> Result<(), PipelineError> {
    // The handlers first: a stop that arrives while the broker starts or
    // the group is joined waits for them (held by `hold_stop_signals`) and
    // ends in a clean stop, not in the default action's death.
    let mut terminate = signal_terminate()?;
    let mut interrupt =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
            .map_err(|e| PipelineError::Runtime(format!("installing the SIGINT handler: {e}")))?;
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| PipelineError::Runtime(format!("installing the SIGHUP handler: {e}")))?;
    release_stop_signals();
    if let Some(d) = demo.as_ref().filter(|d| !d.scenarios.is_empty()) {
        // A demo is watched live: small buckets so a scenario alerts in
        // minutes, and the inventory its benign traffic complies with.
        cfg.detect.bucket_secs = 5;
        cfg.detect.warmup_buckets = 10;
        cfg.detect.new_tool_warmup_buckets = 10;
        if cfg.detect.policy_file.is_none() {
            std::fs::create_dir_all(&cfg.sink.data_dir)
                .map_err(|e| PipelineError::Runtime(format!("creating the data directory: {e}")))?;
            let path = cfg.sink.data_dir.join("demo-policy.toml");
            std::fs::write(&path, crate::traffic::scenario::benign_policy_toml())
                .map_err(|e| PipelineError::Runtime(format!("writing {}: {e}", path.display())))?;
            cfg.detect.policy_file = Some(path);
        }
        let names: Vec<_> = d.scenarios.iter().map(|s| s.name()).collect();
        println!(
            "agentaudit: demo scenarios {} start after {DEMO_SCENARIO_START} events (~{} s); detection on 5-s buckets",
            names.join(", "),
            DEMO_SCENARIO_START / u64::from(d.rate.max(1))
        );
    }
    let demo_rate = demo.as_ref().map(|d| d.rate);
    let demo_scenarios = demo.map(|d| d.scenarios).unwrap_or_default();
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(crate::serve::Health::default());
    let embedded = match &cfg.kafka.brokers {
        Some(_) => None,
        None => {
            let inputs = cfg.inputs();
            let topics: Vec<&str> = inputs.iter().map(|i| i.topic.as_str()).collect();
            Some(crate::source::embedded::EmbeddedBroker::start_with(
                &topics,
                cfg.kafka.embedded_partitions,
            )?)
        }
    };
    let brokers = match (&cfg.kafka.brokers, &embedded) {
        (Some(b), _) => b.clone(),
        (None, Some(e)) => e.bootstrap_servers(),
        (None, None) => unreachable!("an embedded broker is started when no brokers are set"),
    };
    if embedded.is_some() {
        println!(
            "agentaudit: embedded Kafka broker at {brokers} (in memory), topic `{}`; produce with any Kafka client, e.g.\n  kcat -P -b {brokers} -t {}",
            cfg.kafka.topic, cfg.kafka.topic
        );
    }
    let listen = cfg.listen_addr()?;
    let (listener, bound) = crate::serve::bind(listen)
        .await
        .map_err(|e| ConfigError::invalid("serve.listen", format!("cannot bind {listen}: {e}")))?;
    println!(
        "agentaudit: metrics at http://{bound}/metrics, data in {}",
        cfg.sink.data_dir.display()
    );
    let app = crate::serve::router(metrics.clone(), health.clone());
    let http = tokio::spawn(crate::serve::run(listener, app, metrics.clone()));

    let running = tokio::task::block_in_place(|| start(&cfg, &brokers, metrics.clone()))?;
    health.alive.store(true, Ordering::SeqCst);

    let demo_stop = Arc::new(AtomicBool::new(false));
    let demo = match demo_rate {
        None => None,
        Some(rate) => {
            let producer = crate::traffic::producer(&brokers, &[])?;
            let topic = cfg.kafka.topic.clone();
            let format = cfg.kafka.input_format;
            let stop = demo_stop.clone();
            println!("agentaudit: demo traffic at {rate} events/s into `{topic}`");
            Some(std::thread::spawn(move || {
                let mut g = crate::traffic::Generator::new(crate::traffic::GenOptions {
                    malformed_ratio: 0.005,
                    // Event time runs at `rate / 100` times real time; from
                    // 12 h back it stays behind the clock for 12 h at the
                    // default rate, so no demo event is "from the future".
                    start_ms: chrono::Utc::now().timestamp_millis() - 12 * 3_600_000,
                    scenario_start: DEMO_SCENARIO_START,
                    scenario_events: u64::MAX / 2,
                    scenarios: demo_scenarios,
                    ..Default::default()
                });
                let pace = crate::traffic::Pace {
                    count: None,
                    rate: Some(rate),
                    keyed: true,
                    format,
                };
                crate::traffic::produce(&producer, &topic, &mut g, pace, &stop)
            }))
        }
    };

    let mut ticker = tokio::time::interval(Duration::from_millis(500));
    let mut last_report = std::time::Instant::now();
    let policy_file = cfg.detect.policy_file.clone();
    let modified = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut policy_mtime = policy_file.as_deref().and_then(modified);
    let reload = |metrics: &Metrics| {
        if let (Some(path), Some(shared)) = (&policy_file, &running.policy) {
            reload_policy(path, shared, metrics);
        }
    };
    loop {
        tokio::select! {
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
            _ = hangup.recv() => reload(&metrics),
            _ = ticker.tick() => {
                let now_mtime = policy_file.as_deref().and_then(modified);
                if now_mtime != policy_mtime {
                    policy_mtime = now_mtime;
                    reload(&metrics);
                }
                health.ready.store(
                    crate::source::Source::is_assigned(&running.consumer)
                        && metrics.sink_stalled.get() == 0,
                    Ordering::SeqCst,
                );
                if running.finished() {
                    tracing::error!("a pipeline thread stopped unexpectedly");
                    break;
                }
                if last_report.elapsed() >= Duration::from_secs(10) {
                    last_report = std::time::Instant::now();
                    report_progress(&metrics);
                }
            }
        }
    }
    tracing::info!("stopping: flushing and committing");
    health.ready.store(false, Ordering::SeqCst);
    demo_stop.store(true, Ordering::SeqCst);
    if let Some(d) = demo
        && let Ok(Err(e)) = d.join()
    {
        tracing::warn!(error = %e, "demo generator");
    }
    // A plain thread, not the runtime's blocking pool: a stop stuck in
    // librdkafka must not hold the runtime's shutdown, or the process, open.
    let timeout = Duration::from_secs(cfg.serve.shutdown_timeout_secs);
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(running.stop());
    });
    let result = match tokio::time::timeout(timeout, done_rx).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err(PipelineError::Panicked("the stop thread ended".into())),
        Err(_) => {
            tracing::error!(
                timeout_secs = timeout.as_secs(),
                "the stop did not finish in time (is the Kafka group coordinator down?); exiting without it"
            );
            Err(PipelineError::Runtime(format!(
                "the stop did not finish within serve.shutdown_timeout_secs = {}; what was flushed is durable, the rest is consumed again",
                timeout.as_secs()
            )))
        }
    };
    health.alive.store(false, Ordering::SeqCst);
    http.abort();
    report_progress(&metrics);
    drop(embedded);
    result
}

fn report_progress(m: &Metrics) {
    let sum = |v: &prometheus::IntCounterVec, label: &str| v.with_label_values(&[label]).get();
    tracing::info!(
        consumed = m.consumed.get(),
        decoded = m.decoded.get(),
        dead_lettered = m.consumed.get().saturating_sub(m.decoded.get()),
        rows_written = sum(&m.rows_written, crate::sink::INVOCATIONS)
            + sum(&m.rows_written, crate::sink::DEAD_LETTER),
        files_written = sum(&m.files_written, crate::sink::INVOCATIONS)
            + sum(&m.files_written, crate::sink::DEAD_LETTER),
        "progress"
    );
}

fn signal_terminate() -> Result<tokio::signal::unix::Signal, PipelineError> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| PipelineError::Runtime(format!("installing the SIGTERM handler: {e}")))
}

const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

fn mask_stop_signals(how: libc::c_int) {
    // SAFETY: sigemptyset/sigaddset fill a set on our stack, and
    // pthread_sigmask changes only the calling thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in STOP_SIGNALS {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(how, &set, std::ptr::null_mut());
    }
}

/// Holds SIGINT, SIGTERM and SIGHUP pending in this thread and every thread
/// it starts from now on, until `serve` has its handlers: call it first
/// thing, before the runtime's threads exist. A stop sent meanwhile is
/// acted on as soon as the handlers are in, instead of killing the process
/// with status 143 half-way through its start.
pub fn hold_stop_signals() {
    mask_stop_signals(libc::SIG_BLOCK);
}

/// Lets this thread take the held signals again; a pending one is delivered
/// to the handlers now installed.
fn release_stop_signals() {
    mask_stop_signals(libc::SIG_UNBLOCK);
}
