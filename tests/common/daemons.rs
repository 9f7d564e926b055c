//! Daemons from Debian's packages that tests start on loopback: Prometheus
//! and Alertmanager, found where the packages put them, killed on drop.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::http_get;
#[allow(unused_imports)]
pub use super::tansu::free_port;

pub struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn binary(name: &str) -> String {
    for dir in ["/usr/bin", "/usr/local/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p.display().to_string();
        }
    }
    panic!(
        "{name} is not installed: scripts/test.sh installs Debian's prometheus and prometheus-alertmanager"
    );
}

pub fn spawn(bin: &str, args: &[String]) -> Daemon {
    let quiet = std::env::var("AGENTAUDIT_TEST_LOG").is_err();
    Daemon(
        Command::new(binary(bin))
            .args(args)
            .stdout(Stdio::null())
            .stderr(if quiet {
                Stdio::null()
            } else {
                Stdio::inherit()
            })
            .spawn()
            .unwrap_or_else(|e| panic!("starting {bin}: {e}")),
    )
}

pub fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Alertmanager's active alerts as (alertname, labels).
pub fn am_alerts(addr: &str) -> Vec<serde_json::Value> {
    http_get(addr, "/api/v2/alerts")
        .filter(|(code, _)| *code == 200)
        .and_then(|(_, body)| serde_json::from_str::<Vec<serde_json::Value>>(&body).ok())
        .unwrap_or_default()
}

/// Debian's Alertmanager on a free loopback port with `config` (YAML),
/// its state under `root`; returned once it answers ready, with its
/// address.
pub fn start_alertmanager(root: &Path, config: &str) -> (Daemon, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let file = root.join("alertmanager.yml");
    std::fs::write(&file, config).expect("alertmanager config");
    let daemon = spawn(
        "prometheus-alertmanager",
        &[
            format!("--config.file={}", file.display()),
            format!("--storage.path={}", root.join("am-data").display()),
            format!("--web.listen-address={addr}"),
            "--cluster.listen-address=".into(),
        ],
    );
    wait_for("Alertmanager", Duration::from_secs(60), || {
        http_get(&addr, "/-/ready").is_some_and(|(c, _)| c == 200)
    });
    (daemon, addr)
}
