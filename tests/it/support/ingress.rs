//! Real ingresses for end-to-end tests: nginx (Debian `nginx-light`, which has
//! `auth_request`) and Caddy (Debian `caddy`, which has `forward_auth`). Each runs on a
//! free port from a temp directory holding its configuration, pid file, temp paths, data
//! and logs, and is stopped when dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{address_in_use, free_port};

/// A file shipped in `deploy/`, by absolute path (for `include` / `import`).
pub fn deploy_file(relative: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(relative);
    assert!(path.is_file(), "{} is not shipped", path.display());
    path
}

/// A running nginx or Caddy.
pub struct Ingress {
    child: Child,
    dir: tempfile::TempDir,
    /// Where clients connect.
    pub addr: SocketAddr,
    /// The log file, inside `dir`.
    log: &'static str,
}

impl Ingress {
    /// nginx with `http_body` as the body of its `http` block; `{LISTEN}` in it is replaced
    /// by the address it must listen on. Runs in the foreground (`daemon off`) with the
    /// pid file, temp paths and error log in its own directory.
    pub fn nginx(http_body: &str) -> Ingress {
        launch(|addr| {
            let dir = tempfile::tempdir().expect("temp dir");
            let d = dir.path().display();
            let conf = format!(
                "daemon off;\n\
                 pid {d}/nginx.pid;\n\
                 error_log {d}/error.log info;\n\
                 events {{ worker_connections 256; }}\n\
                 http {{\n\
                 access_log off;\n\
                 client_body_temp_path {d}/client_body;\n\
                 proxy_temp_path {d}/proxy;\n\
                 fastcgi_temp_path {d}/fastcgi;\n\
                 uwsgi_temp_path {d}/uwsgi;\n\
                 scgi_temp_path {d}/scgi;\n\
                 {}\n\
                 }}\n",
                http_body.replace("{LISTEN}", &addr.to_string())
            );
            let conf_path = dir.path().join("nginx.conf");
            std::fs::write(&conf_path, conf).expect("write nginx.conf");
            let log = std::fs::File::create(dir.path().join("stderr.log")).expect("log file");
            let child = Command::new(nginx_binary())
                .arg("-p")
                .arg(dir.path())
                .arg("-c")
                .arg(&conf_path)
                // The error log before the configuration is read.
                .arg("-e")
                .arg(dir.path().join("error.log"))
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("nginx runs (Debian package nginx-light)");
            Ingress::started(child, dir, addr, "error.log")
        })
    }

    /// Caddy with `site_body` as the body of a site on its address for every host name,
    /// `env` in its environment, admin API and automatic HTTPS off, and
    /// HOME / XDG directories in its own directory.
    pub fn caddy(site_body: &str, env: &[(&str, &str)]) -> Ingress {
        launch(|addr| {
            let dir = tempfile::tempdir().expect("temp dir");
            let caddyfile = format!(
                "{{\n\tadmin off\n\tauto_https off\n}}\n\
                 http://:{} {{\n\tbind {}\n{site_body}\n}}\n",
                addr.port(),
                addr.ip()
            );
            let path = dir.path().join("Caddyfile");
            std::fs::write(&path, caddyfile).expect("write Caddyfile");
            let log = std::fs::File::create(dir.path().join("caddy.log")).expect("log file");
            let child = Command::new("caddy")
                .args(["run", "--adapter", "caddyfile", "--config"])
                .arg(&path)
                .env("HOME", dir.path())
                .env("XDG_DATA_HOME", dir.path().join("data"))
                .env("XDG_CONFIG_HOME", dir.path().join("config"))
                .envs(env.iter().copied())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("caddy runs (Debian package caddy)");
            Ingress::started(child, dir, addr, "caddy.log")
        })
    }

    /// Waits until `addr` accepts; `Err` with the log if the process exits first.
    fn started(
        child: Child,
        dir: tempfile::TempDir,
        addr: SocketAddr,
        log: &'static str,
    ) -> Result<Ingress, String> {
        let mut ingress = Ingress {
            child,
            dir,
            addr,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(addr).is_err() {
            if let Ok(Some(status)) = ingress.child.try_wait() {
                return Err(format!("exit {status}:\n{}", ingress.log()));
            }
            assert!(
                Instant::now() < deadline,
                "{addr} never opened:\n{}",
                ingress.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(ingress)
    }

    /// `http://ADDR`.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Its log (nginx: error log and stderr; Caddy: its stderr).
    pub fn log(&self) -> String {
        let read =
            |name: &str| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        format!("{}{}", read(self.log), read("stderr.log"))
    }
}

impl Drop for Ingress {
    fn drop(&mut self) {
        // TERM first: nginx's master then stops its workers (a KILL would orphan them).
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts an ingress on a free port, on another one if the port was taken before it bound.
fn launch(start: impl Fn(SocketAddr) -> Result<Ingress, String>) -> Ingress {
    let mut last = String::new();
    for _ in 0..3 {
        match start(SocketAddr::from(([127, 0, 0, 1], free_port()))) {
            Ok(ingress) => return ingress,
            Err(log) if address_in_use(&log) => last = log,
            Err(log) => panic!("the ingress did not start: {log}"),
        }
    }
    panic!("no free port after three tries: {last}")
}

/// nginx is in /usr/sbin, which is not on every user's PATH.
fn nginx_binary() -> &'static str {
    if Path::new("/usr/sbin/nginx").is_file() {
        "/usr/sbin/nginx"
    } else {
        "nginx"
    }
}
