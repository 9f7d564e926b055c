//! tansu, a Kafka-compatible broker, as a separate process on loopback for
//! the end-to-end tests; and the environment the test command sets.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: run ./scripts/test.sh, which installs tansu and the Python tools"
        )
    })
}

pub struct Tansu(Child);

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A tansu broker on loopback `port`, memory storage, killed on drop.
pub fn start_tansu(bin: &str, port: u16) -> Tansu {
    let url = format!("tcp://127.0.0.1:{port}");
    let child = Command::new(bin)
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ])
        .args(["--storage-engine", "memory://tansu/"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start tansu");
    let tansu = Tansu(child);
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "tansu did not listen"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    tansu
}

/// Creates `topic` with `partitions` through tansu's own CLI.
pub fn create_topic(bin: &str, port: u16, topic: &str, partitions: u32) {
    let status = Command::new(bin)
        .args([
            "topic",
            "create",
            topic,
            "--partitions",
            &partitions.to_string(),
        ])
        .args(["--broker", &format!("tcp://127.0.0.1:{port}")])
        .status()
        .expect("tansu topic create");
    assert!(status.success());
}
