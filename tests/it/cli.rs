//! The binary's command line: `check`, start-up failures, `--version`.

use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cloudbase-gateway"))
}

fn write(dir: &tempfile::TempDir, text: &str) -> std::path::PathBuf {
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn check_prints_the_effective_config_with_secrets_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        "[cloudbase]\nenv_id = \"e\"\nclient_secret = \"${TEST_SECRET}\"\n",
    );
    let out = bin()
        .arg("check")
        .arg("--config")
        .arg(&path)
        .env("TEST_SECRET", "hunter2-secret")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("https://e.ap-shanghai.tcb-api.tencentcloudapi.com/auth/v1"),
        "{stdout}"
    );
    assert!(stdout.contains("[redacted]"));
    assert!(
        !stdout.contains("hunter2-secret"),
        "secret printed:\n{stdout}"
    );
}

#[test]
fn check_lists_every_mistake_with_its_key_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        "[server]\nlisten = \"nowhere\"\nmax_body_size = \"lots\"\n[cloudbase]\nenv_id = \"e\"\n\
         [[routes]]\nprefix = \"/a/\"\nupstream = \"gopher://x\"\n",
    );
    let out = bin()
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for key in [
        "server.listen:",
        "server.max_body_size:",
        "routes[0].upstream:",
    ] {
        assert!(stderr.contains(key), "{key} missing from:\n{stderr}");
    }
}

#[test]
fn a_port_in_use_fails_with_one_clear_line_and_exit_1() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        &format!("[server]\nlisten = \"127.0.0.1:{port}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[cloudbase]\nenv_id = \"e\"\n"),
    );
    let out = bin().arg("--config").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr
        .lines()
        .find(|l| l.contains("cannot"))
        .expect("an error line");
    assert!(
        line.contains(&port.to_string()) && line.contains("in use"),
        "{stderr}"
    );
}

#[test]
fn a_missing_config_file_is_a_clear_error() {
    let out = bin()
        .arg("--config")
        .arg("/nonexistent/gw.toml")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read /nonexistent/gw.toml"));
}

#[test]
fn version_and_help() {
    let out = bin().arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    let out = bin().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("check") && help.contains("emulator") && help.contains("--config"));
}

#[test]
fn the_emulator_runs_with_no_config_file_from_its_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", crate::support::free_port())
        .parse()
        .unwrap();
    let mut child = bin()
        .current_dir(dir.path())
        .env_remove("CLOUDBASE_GATEWAY_CONFIG")
        .args(["emulator", "--listen", &addr.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::net::TcpStream::connect(addr).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            let mut stderr = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
            panic!("the emulator exited with {status}:\n{stderr}");
        }
        assert!(std::time::Instant::now() < deadline, "{addr} never opened");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let answer = std::process::Command::new("curl")
        .args(["-s", "-X", "POST", "-H", "content-type: application/json"])
        .args(["-H", "x-device-id: device-0123456789abcdef", "-d", "{}"])
        .arg(format!("http://{addr}/auth/v1/signin/anonymously"))
        .output()
        .expect("curl runs");
    let _ = child.kill();
    let _ = child.wait();
    let body: serde_json::Value = serde_json::from_slice(&answer.stdout)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&answer.stdout)));
    assert_eq!(body["token_type"], "Bearer", "{body}");
    assert_eq!(body["scope"], "anonymous", "{body}");
}
