//! The README's quick start, run as written against the binary on the shipped config.toml.

use crate::support;
use crate::support::Process;

/// The fenced block after the `<!-- quickstart` marker in README.md.
fn quickstart_script() -> String {
    let readme = include_str!("../../README.md");
    let after = &readme[readme.find("<!-- quickstart").expect("marker in README")..];
    let start = after.find("```bash\n").expect("bash block") + "```bash\n".len();
    let end = after[start..].find("```").expect("end of block");
    after[start..start + end].to_owned()
}

#[test]
fn the_readme_quick_start_works_on_the_shipped_config() {
    let config = include_str!("../../config.toml");
    let gateway = Process::spawn(config, &[], &[], "127.0.0.1:8080".parse().unwrap());
    support::wait_for_port("127.0.0.1:8081".parse().unwrap());
    let out = std::process::Command::new("bash")
        .args(["-euo", "pipefail", "-c", &quickstart_script()])
        .output()
        .expect("bash and curl run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "quick start failed:\n{stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        gateway.log()
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    let whoami: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(whoami["headers"]["x-user-username"], "demo");
    assert_eq!(
        whoami["headers"]["x-user-name"],
        "%E6%BC%94%E7%A4%BA%E7%94%A8%E6%88%B7"
    );
    let refused: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
    assert_eq!(refused["code"], "MISSING_CREDENTIALS");
    let public: serde_json::Value = serde_json::from_str(lines[2]).unwrap();
    assert!(
        public["headers"].get("x-user-id").is_none(),
        "forged header stripped"
    );
}
