use super::*;

fn load(text: &str) -> Result<Config, ConfigErrors> {
    Config::from_toml_str_with_env(text, |name| (name == "SECRET").then(|| "s3cr3t".to_owned()))
}

#[test]
fn empty_file_uses_defaults_with_emulator_url() {
    let c = load("[emulator]\nenabled = true\n").unwrap();
    assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.cloudbase.base_url, "http://127.0.0.1:8081/auth/v1");
    assert_eq!(c.cache.ttl, Duration::from_secs(60));
    assert_eq!(c.identity.headers.len(), 8);
}
