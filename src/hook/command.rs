//! Command owns running the configured program for one alert: its own
//! process with the agent and credential as its last two arguments and the
//! alert's keys in `AGENTAUDIT_*` variables, a deadline after which it is
//! killed, and its output kept bounded for the audit row.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::Action;

/// Bytes of the command's output read; the hook redacts them, then keeps
/// the first `super::OUTPUT_CHARS` characters.
const OUTPUT_BYTES: usize = 8_192;

pub struct Ran {
    pub exit_code: Option<i32>,
    pub outcome: String,
    pub output: String,
}

/// Runs `program args… extra…`; never through a shell, so nothing an alert
/// carries is interpreted.
pub fn run(
    program: &Path,
    args: &[String],
    extra: &[&str],
    action: &Action,
    timeout: Duration,
) -> Ran {
    let mut child = match Command::new(program)
        .args(args)
        .args(extra)
        .env("AGENTAUDIT_TENANT", &action.tenant)
        .env("AGENTAUDIT_AGENT", &action.agent_id)
        .env("AGENTAUDIT_CREDENTIAL", &action.credential_id)
        .env("AGENTAUDIT_RULE", &action.rule)
        .env("AGENTAUDIT_SEVERITY", &action.severity)
        .env("AGENTAUDIT_ALERT_ID", &action.alert_id)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            return Ran {
                exit_code: None,
                outcome: format!("failed: cannot start {}: {e}", program.display()),
                output: String::new(),
            };
        }
    };
    // Drained on their own threads, so a chatty command cannot block on a
    // full pipe; only the first bytes are kept.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut kept = Vec::new();
            if let Some(mut p) = pipe {
                let mut buf = [0u8; 8192];
                while let Ok(n) = p.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if kept.len() < OUTPUT_BYTES {
                        kept.extend_from_slice(&buf[..n]);
                    }
                }
            }
            kept
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(_) => break None,
        }
    };
    let mut output = out.join().unwrap_or_default();
    output.extend(err.join().unwrap_or_default());
    let output = String::from_utf8_lossy(&output).into_owned();
    match status {
        Some(s) if s.success() => Ran {
            exit_code: s.code(),
            outcome: "ran".into(),
            output,
        },
        Some(s) => Ran {
            exit_code: s.code(),
            outcome: format!(
                "failed: exit {}",
                s.code().map_or("by signal".into(), |c| c.to_string())
            ),
            output,
        },
        None => Ran {
            exit_code: None,
            outcome: format!("failed: killed after {} s", timeout.as_secs()),
            output,
        },
    }
}
