//! `flagctl serve` as a separate process, for tests that need two servers or a process of its own.

use super::free_port;
use super::server::Http;
use reqwest::StatusCode;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A `flagctl serve` process, killed when dropped (also when the test panics, when its log is
/// printed).
pub struct ServerProcess {
    name: &'static str,
    pub child: std::process::Child,
    pub http: Http,
    log: PathBuf,
}

impl ServerProcess {
    /// Starts `flagctl serve` with only these variables (no `.env.local`: it runs in `data_dir`,
    /// which also holds its signing keys).
    pub fn spawn(name: &'static str, vars: &[(&str, &str)], data_dir: &Path) -> Self {
        let port = free_port();
        let log = data_dir.join(format!("{name}.log"));
        std::fs::create_dir_all(data_dir).unwrap();
        let output = std::fs::File::create(&log).unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_flagctl"))
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("PORT", port.to_string())
            .env("FLAGS_DATA_DIR", data_dir)
            .env("RUST_LOG", "info")
            .envs(vars.iter().copied())
            .current_dir(data_dir)
            .stdin(std::process::Stdio::null())
            .stdout(output.try_clone().unwrap())
            .stderr(output)
            .spawn()
            .unwrap();
        Self {
            name,
            child,
            http: Http::new(format!("http://127.0.0.1:{port}")),
            log,
        }
    }

    /// Waits until it answers `/health` with `redis` as given (`up`, `disabled`).
    pub async fn wait_ready(&mut self, redis: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("{} exited with {status}", self.name);
            }
            if let Ok(response) = reqwest::get(format!("{}/health", self.http.base)).await
                && response.status() == StatusCode::OK
                && response.json::<Value>().await.unwrap()["redis"] == redis
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} never became ready",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Its resident memory (`VmRSS`), in KiB.
    pub fn resident_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- last lines of {} ({}):", self.name, self.log.display());
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}
