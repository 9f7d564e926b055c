//! A stop at any moment of `serve`'s start ends in a clean stop (status 0),
//! not in the default action of SIGTERM (status 143): the handlers are in
//! before anything that would need cleaning up exists.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Starts `serve` on the embedded broker, sends SIGTERM once `ready` says
/// so of a line on stdout (or at once, with `None`), and returns its status.
fn stop_during_start(ready: Option<&str>, delay: Duration) -> std::process::ExitStatus {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_agentaudit"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .env("AGENTAUDIT_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn serve");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    if let Some(ready) = ready {
        loop {
            let line = lines
                .next()
                .unwrap_or_else(|| panic!("serve exited before printing {ready:?}"))
                .expect("read stdout");
            if line.contains(ready) {
                break;
            }
        }
    }
    std::thread::spawn(move || for _ in lines {});
    std::thread::sleep(delay);
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(sent.success());
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            return s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "serve did not stop after SIGTERM during its start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The review saw status 143 for a SIGTERM before the handler was in: the
/// broker had started, the group was being joined.
#[test]
fn sigterm_at_any_moment_of_the_start_is_a_clean_stop() {
    for (ready, delay) in [
        (Some("embedded Kafka broker at"), Duration::ZERO),
        (Some("metrics at"), Duration::ZERO),
        (Some("metrics at"), Duration::from_millis(300)),
        (None, Duration::from_millis(150)),
    ] {
        let status = stop_during_start(ready, delay);
        assert!(
            status.success(),
            "SIGTERM after {ready:?} + {delay:?}: {status:?} (143 is SIGTERM's default action)"
        );
    }
}
