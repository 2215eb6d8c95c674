//! A Redis server owned by a test or a benchmark run, on a spare port: it can be killed,
//! restarted, frozen and demoted to a replica without touching the shared server on 6379.

use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// The server process is killed when this value is dropped (also when the test panics).
#[derive(Debug)]
pub struct OwnedRedis {
    pub port: u16,
    child: Option<Child>,
    extra_args: Vec<String>,
}

impl OwnedRedis {
    pub async fn start() -> std::io::Result<Self> {
        Self::start_with_args(&[]).await
    }

    /// Like [`Self::start`], with more `redis-server` arguments (kept for every restart), e.g.
    /// `["--enable-debug-command", "local"]` to allow `DEBUG SLEEP` (off by default since 7.0).
    pub async fn start_with_args(extra_args: &[&str]) -> std::io::Result<Self> {
        let mut redis = Self {
            port: crate::free_port()?,
            child: None,
            extra_args: extra_args.iter().map(|a| (*a).to_owned()).collect(),
        };
        redis.restart().await?;
        Ok(redis)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// (Re)starts the server on the same port, empty (it keeps nothing on disk), and waits
    /// until it answers.
    pub async fn restart(&mut self) -> std::io::Result<()> {
        let port = self.port.to_string();
        let child = Command::new("redis-server")
            .args(["--port", &port, "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "no", "--maxclients", "1000"])
            .args(&self.extra_args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| std::io::Error::other(format!("redis-server must be installed: {e}")))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self
            .cli(&["PING"])
            .await
            .map(|r| r.trim() != "PONG")
            .unwrap_or(true)
        {
            if Instant::now() > deadline {
                return Err(std::io::Error::other("redis-server did not start"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Kills the server abruptly (SIGKILL), as a crash or the loss of a node would.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            self.signal("CONT").await;
            let _ = child.kill().await;
        }
    }

    /// SIGSTOP: the server keeps its connections but answers nothing (a long GC-like pause).
    pub async fn freeze(&self) {
        self.signal("STOP").await;
    }

    pub async fn thaw(&self) {
        self.signal("CONT").await;
    }

    /// Makes the server a replica of a primary that does not answer, so it rejects writes with
    /// READONLY while still serving reads: a failover as the old primary's clients see it.
    pub async fn demote(&self) -> std::io::Result<String> {
        self.cli(&["REPLICAOF", "127.0.0.1", "1"]).await
    }

    pub async fn promote(&self) -> std::io::Result<String> {
        self.cli(&["REPLICAOF", "NO", "ONE"]).await
    }

    /// Runs one `redis-cli` command against this server and returns its output.
    pub async fn cli(&self, args: &[&str]) -> std::io::Result<String> {
        redis_cli(self.port, args).await
    }

    async fn signal(&self, name: &str) {
        if let Some(pid) = self.child.as_ref().and_then(Child::id) {
            let _ = Command::new("kill")
                .arg(format!("-{name}"))
                .arg(pid.to_string())
                .status()
                .await;
        }
    }
}

/// Runs one `redis-cli` command against the server on `port` and returns its output.
pub async fn redis_cli(port: u16, args: &[&str]) -> std::io::Result<String> {
    let output = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await?;
    if !output.status.success() {
        return Err(std::io::Error::other(
            String::from_utf8_lossy(&output.stderr).into_owned(),
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Client connections of the server on `port`, other than the one asking.
pub async fn client_count(port: u16) -> std::io::Result<usize> {
    let list = redis_cli(port, &["CLIENT", "LIST"]).await?;
    Ok(list.lines().count().saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// `PING` on a raw connection, answered within `limit`?
    async fn pong_within(port: u16, limit: Duration) -> bool {
        let attempt = async {
            let mut socket = TcpStream::connect(("127.0.0.1", port)).await?;
            socket.write_all(b"PING\r\n").await?;
            let mut reply = [0u8; 7];
            socket.read_exact(&mut reply).await?;
            Ok::<_, std::io::Error>(&reply == b"+PONG\r\n")
        };
        matches!(tokio::time::timeout(limit, attempt).await, Ok(Ok(true)))
    }

    #[tokio::test]
    #[allow(clippy::unwrap_used)]
    async fn starts_freezes_thaws_kills_and_restarts() {
        let mut redis = OwnedRedis::start_with_args(&["--enable-debug-command", "local"])
            .await
            .unwrap();
        assert_eq!(redis.url(), format!("redis://127.0.0.1:{}", redis.port));
        assert_eq!(redis.cli(&["SET", "k", "v"]).await.unwrap().trim(), "OK");
        let limit = Duration::from_millis(300);
        assert!(pong_within(redis.port, limit).await);

        redis.freeze().await;
        assert!(!pong_within(redis.port, limit).await, "frozen: no answer");
        redis.thaw().await;
        assert!(
            pong_within(redis.port, limit).await,
            "thawed: answers again"
        );

        redis.kill().await;
        assert!(!pong_within(redis.port, limit).await, "killed");
        redis.restart().await.unwrap();
        assert_eq!(
            redis.cli(&["EXISTS", "k"]).await.unwrap().trim(),
            "0",
            "restarted empty, on the same port"
        );
        assert_eq!(
            redis.cli(&["DEBUG", "SLEEP", "0"]).await.unwrap().trim(),
            "OK",
            "the extra arguments are kept across restarts"
        );
        assert!(client_count(redis.port).await.unwrap() <= 1);
    }
}
