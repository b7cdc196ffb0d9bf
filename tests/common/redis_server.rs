//! A real `redis-server` (Debian package `redis-server`; `.ci/run` installs it) for tests:
//! on a free 127.0.0.1 port, in its own temp dir, no persistence, killed on drop. Tests can
//! kill it, restart it on the same port, or freeze it (SIGSTOP: connections stay open and
//! nothing answers, the fault a timeout exists for).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers `PING`.
    pub fn start() -> RedisServer {
        let dir = tempfile::tempdir().unwrap();
        for _ in 0..5 {
            let port = free_port();
            if let Some(child) = spawn(port, dir.path()) {
                return RedisServer {
                    child: Some(child),
                    port,
                    dir,
                };
            }
        }
        panic!("redis-server did not start:\n{}", log(dir.path()));
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection of its own, for checking and tampering with what the code under test
    /// stored.
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("redis-server accepts connections")
    }

    /// Kills the server (SIGKILL): every connection drops, new ones are refused.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a fresh, empty server on the same port (killing the old one if it runs).
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(child) = spawn(self.port, self.dir.path()) {
                self.child = Some(child);
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "redis-server did not restart on port {}:\n{}",
            self.port,
            log(self.dir.path())
        );
    }

    /// Stops the server without closing anything (SIGSTOP): commands are sent and never
    /// answered until [`RedisServer::thaw`].
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("redis-server running");
        let ok = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .expect("kill runs")
            .success();
        assert!(ok, "kill {signal} failed");
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        log(self.dir.path())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("redis.log")).unwrap_or_default()
}

/// Runs `redis-server` on `port`; `None` if it exits (port taken) or never answers.
fn spawn(port: u16, dir: &Path) -> Option<Child> {
    let mut child = Command::new("redis-server")
        .args(["--port", &port.to_string()])
        .args(["--bind", "127.0.0.1"])
        .args(["--save", ""])
        .args(["--appendonly", "no"])
        .args(["--daemonize", "no"])
        .arg("--dir")
        .arg(dir)
        .arg("--logfile")
        .arg(dir.join("redis.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run redis-server ({e}): apt-get install redis-server (.ci/run does)")
        });
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return None;
        }
        if serves_on(port, child.id()) {
            return Some(child);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// Whether the server answering on `port` is process `pid` (not another test's server
/// that got the same free port).
fn serves_on(port: u16, pid: u32) -> bool {
    let Ok(s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let mut reader = std::io::BufReader::new(&s);
    if (&s).write_all(b"INFO server\r\n").is_err() {
        return false;
    }
    let mut header = String::new();
    if std::io::BufRead::read_line(&mut reader, &mut header).is_err() {
        return false;
    }
    let Some(len) = header
        .trim_end()
        .strip_prefix('$')
        .and_then(|n| n.parse::<usize>().ok())
    else {
        return false;
    };
    let mut info = vec![0u8; len];
    reader.read_exact(&mut info).is_ok()
        && String::from_utf8_lossy(&info).contains(&format!("process_id:{pid}\r\n"))
}
