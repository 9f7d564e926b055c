//! Command owns running the configured program for one revocation: its own
//! process group, a cleared environment (an allowlist plus the alert's keys
//! in `AGENTAUDIT_*` variables), the inventory's agent and credentials as
//! arguments after `--`, a deadline after which the whole group is killed,
//! and its output kept bounded for the audit row.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::Action;

/// Bytes of the command's output read; the hook redacts them, then keeps
/// the first `super::OUTPUT_CHARS` characters.
const OUTPUT_BYTES: usize = 8_192;

/// Variables passed through from the hook's own environment when set; the
/// rest (the hook's secret, cloud keys) never reach the command.
pub const ENV_ALLOWLIST: [&str; 5] = ["PATH", "HOME", "LANG", "LC_ALL", "TZ"];

pub struct Ran {
    pub exit_code: Option<i32>,
    pub outcome: String,
    pub output: String,
}

/// What a run is given.
pub struct Invocation<'a> {
    pub program: &'a Path,
    /// The operator's arguments, before `--`.
    pub args: &'a [String],
    /// After `--`: the agent, then its credentials, all from the inventory.
    pub targets: &'a [String],
    /// Further variables the operator passes through by name.
    pub pass_env: &'a [String],
    pub timeout: Duration,
}

/// Runs `program args… -- targets…`; never through a shell, so nothing an
/// alert carries is interpreted, and after `--`, so no target is an option.
pub fn run(inv: &Invocation<'_>, action: &Action) -> Ran {
    let mut cmd = Command::new(inv.program);
    cmd.args(inv.args)
        .arg("--")
        .args(inv.targets)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group: at the deadline the group is killed, so a
        // grandchild holding the pipes cannot outlive it.
        .process_group(0);
    for name in ENV_ALLOWLIST
        .iter()
        .copied()
        .chain(inv.pass_env.iter().map(String::as_str))
    {
        if let Some(v) = std::env::var_os(name) {
            cmd.env(name, v);
        }
    }
    cmd.env("AGENTAUDIT_TENANT", &action.tenant)
        .env("AGENTAUDIT_AGENT", &action.agent_id)
        .env("AGENTAUDIT_CREDENTIAL", &action.credential_id)
        .env("AGENTAUDIT_RULE", &action.rule)
        .env("AGENTAUDIT_SEVERITY", &action.severity)
        .env("AGENTAUDIT_ALERT_ID", &action.alert_id);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return Ran {
                exit_code: None,
                outcome: format!("failed: cannot start {}: {e}", inv.program.display()),
                output: String::new(),
            };
        }
    };
    let group = child.id() as libc::pid_t;
    // Drained on their own threads, so a chatty command cannot block on a
    // full pipe; only the first bytes are kept. Each sends what it kept when
    // its pipe closes, which a grandchild may delay past the deadline.
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let mut drains = 0;
    let pipes: [Option<Box<dyn Read + Send>>; 2] = [
        child.stdout.take().map(|p| Box::new(p) as _),
        child.stderr.take().map(|p| Box::new(p) as _),
    ];
    for mut pipe in pipes.into_iter().flatten() {
        let tx = tx.clone();
        drains += 1;
        std::thread::spawn(move || {
            let mut kept = Vec::new();
            let mut buf = [0u8; 8192];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if kept.len() < OUTPUT_BYTES {
                    kept.extend_from_slice(&buf[..n]);
                }
            }
            let _ = tx.send(kept);
        });
    }
    drop(tx);
    let deadline = Instant::now() + inv.timeout;
    let kill_group = || {
        // SAFETY: kill(2) with a negative pid signals the process group the
        // child leads (process_group(0) made its pid the group id); it
        // touches no memory of ours.
        unsafe {
            libc::kill(-group, libc::SIGKILL);
        }
    };
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() >= deadline => {
                kill_group();
                let _ = child.kill();
                let _ = child.wait();
                timed_out = true;
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(_) => {
                kill_group();
                let _ = child.wait();
                break None;
            }
        }
    };
    let mut output = Vec::new();
    for _ in 0..drains {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left.max(Duration::from_millis(50))) {
            Ok(kept) => output.extend(kept),
            Err(_) => {
                // Something the command left behind holds its pipes past
                // the deadline: the whole group goes.
                kill_group();
                timed_out = true;
                if let Ok(kept) = rx.recv_timeout(Duration::from_secs(1)) {
                    output.extend(kept);
                }
            }
        }
    }
    let output = String::from_utf8_lossy(&output).into_owned();
    match status {
        Some(s) if s.success() && !timed_out => Ran {
            exit_code: s.code(),
            outcome: "ran".into(),
            output,
        },
        Some(s) if s.success() => Ran {
            exit_code: s.code(),
            outcome: format!(
                "ran: exit 0, then its process group was killed after {} s",
                inv.timeout.as_secs()
            ),
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
            outcome: format!(
                "failed: its process group was killed after {} s",
                inv.timeout.as_secs()
            ),
            output,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn action() -> Action {
        Action {
            at_ms: 0,
            alert_id: "a1".into(),
            rule: "r".into(),
            severity: "critical".into(),
            tenant: "acme".into(),
            agent_id: "support-bot".into(),
            credential_id: "cred-1".into(),
            command: String::new(),
            exit_code: None,
            outcome: String::new(),
            output: String::new(),
            fingerprint: String::new(),
        }
    }

    fn script(dir: &Path, body: &str) -> std::path::PathBuf {
        let p = dir.join("cmd.sh");
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    /// The targets arrive after `--`, each as one argument, whatever they
    /// hold; the hook's environment (its secret, cloud keys) does not.
    #[test]
    fn targets_follow_a_double_dash_and_the_environment_is_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let p = script(
            dir.path(),
            "for a in \"$@\"; do echo \"arg[$a]\"; done; echo \"pkg[$CARGO_PKG_NAME]\"; echo \"dir[$CARGO_MANIFEST_DIR]\"; echo \"agent[$AGENTAUDIT_AGENT]\"",
        );
        // Cargo sets both in the test's own environment (no set_var here:
        // the environment is the whole process's); only the one named in
        // pass_env may reach the command.
        assert!(std::env::var_os("CARGO_PKG_NAME").is_some());
        assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
        let args = vec!["--profile".to_owned(), "prod".to_owned()];
        let targets = vec!["--all".to_owned(), "$(id)".to_owned()];
        let ran = run(
            &Invocation {
                program: &p,
                args: &args,
                targets: &targets,
                pass_env: &["CARGO_PKG_NAME".to_owned()],
                timeout: Duration::from_secs(10),
            },
            &action(),
        );
        assert_eq!(ran.outcome, "ran", "{}", ran.output);
        let lines: Vec<&str> = ran.output.lines().collect();
        assert_eq!(
            lines[..5],
            [
                "arg[--profile]",
                "arg[prod]",
                "arg[--]",
                "arg[--all]",
                "arg[$(id)]"
            ]
        );
        assert!(ran.output.contains("pkg[agentaudit]"), "{}", ran.output);
        assert!(ran.output.contains("dir[]"), "{}", ran.output);
        assert!(ran.output.contains("agent[support-bot]"), "{}", ran.output);
    }

    fn within_a_second(program: &Path) -> Ran {
        let invocation = Invocation {
            program,
            args: &[],
            targets: &[],
            pass_env: &[],
            timeout: Duration::from_secs(1),
        };
        run(&invocation, &action())
    }

    /// A grandchild holding the pipes used to keep a 2-s deadline waiting
    /// for as long as it lived; the group is killed at the deadline.
    #[test]
    fn the_whole_process_group_is_killed_at_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let p = script(dir.path(), "sleep 30 &\necho started\nsleep 30");
        let start = Instant::now();
        let ran = within_a_second(&p);
        assert!(
            ran.outcome
                .starts_with("failed: its process group was killed")
        );
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "waited {:?} for a grandchild",
            start.elapsed()
        );
        // And a command that exits at once but leaves a child on its pipe.
        let p = script(dir.path(), "sleep 30 &\necho done");
        let start = Instant::now();
        let ran = within_a_second(&p);
        assert!(
            ran.outcome.starts_with("ran: exit 0, then"),
            "{}",
            ran.outcome
        );
        assert!(start.elapsed() < Duration::from_secs(10));
    }
}
