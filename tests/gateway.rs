//! The gateway end to end: real gateway, real emulator, real upstreams, on 127.0.0.1.

mod common;

use common::*;
use serde_json::Value;

#[tokio::test]
async fn a_signed_in_user_reaches_the_upstream_with_identity_headers() {
    let (upstream, _) = spawn_echo_upstream().await;
    let h = Harness::start(&format!("[[routes]]\nprefix = \"/api/\"\nupstream = \"http://{upstream}\"\n")).await;
    let token = h.demo_token().await;
    let r = h.get("/api/hello?x=1", Some(&token)).await;
    assert_eq!(r.status(), 200);
    let echo: Value = r.json().await.unwrap();
    assert_eq!(echo["path"], "/api/hello");
    assert_eq!(echo["query"], "x=1");
    assert_eq!(echo["headers"]["x-user-username"], "demo");
    assert_eq!(echo["headers"]["x-user-name"], "Demo User");
    assert_eq!(echo["headers"]["x-user-anonymous"], "false");
    assert_eq!(echo["headers"]["x-user-groups"], "user");
    h.shutdown().await;
}
