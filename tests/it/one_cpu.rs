//! The binary confined to one CPU (`taskset -c 0`, as a cpuset or a one-core cgroup quota
//! would) runs on tokio's current-thread runtime (src/main.rs): everything — listener,
//! connections, the embedded emulator, CloudBase calls, the cache, shutdown — shares one
//! thread, and none of it may wait on another thread that is not there.

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::*;

#[tokio::test]
async fn confined_to_one_cpu_it_runs_on_one_thread_and_authenticates_proxies_and_drains() {
    let (port, admin, emulator) = (free_port(), free_port(), free_port());
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
[admin]
listen = "127.0.0.1:{admin}"
[cloudbase]
env_id = "one-cpu"
client_id = "test-client"
[emulator]
enabled = true
listen = "127.0.0.1:{emulator}"
[[emulator.users]]
username = "solo"
password = "solo-password"
name = "Solo"
[[routes]]
prefix = "/api/"
upstream = "whoami"
auth = "required"
"#
    );
    let gateway: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let process = Process::spawn_on_one_cpu(&config, &[("RUST_LOG", "info")], gateway);
    wait_for_port(format!("127.0.0.1:{emulator}").parse().unwrap());
    assert!(
        process
            .log()
            .contains("tokio runtime: current-thread (one CPU to run on)"),
        "{}",
        process.log()
    );

    let token = sign_in(
        &emulator_client(format!("127.0.0.1:{emulator}").parse().unwrap(), ""),
        "solo",
        "solo-password",
    )
    .await
    .access_token;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let url = format!("http://{gateway}/api/who");
    assert_eq!(http.get(&url).send().await.unwrap().status(), 401);

    // Many requests at once for one new token: one thread serves them all, the first
    // ones waiting on the single CloudBase validation, none on a thread that is not there.
    let requests = (0..50).map(|_| {
        let (http, url, token) = (http.clone(), url.clone(), token.clone());
        async move {
            let r = http.get(&url).bearer_auth(&token).send().await.unwrap();
            (r.status(), r.text().await.unwrap())
        }
    });
    for (status, body) in futures_util::future::join_all(requests).await {
        assert_eq!(status, 200, "{body}");
        assert!(
            body.contains("Solo"),
            "the identity reached the upstream: {body}"
        );
    }
    let metrics = metrics_at(&http, &format!("http://127.0.0.1:{admin}")).await;
    assert_eq!(
        metric(
            &metrics,
            "cloudbase_gateway_cloudbase_requests_total{endpoint=\"introspect\",outcome=\"ok\"}"
        ),
        1.0,
        "{metrics}"
    );

    // SIGTERM drains and exits 0.
    process.terminate();
    let mut process = process;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = process.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}\n{}", process.log());
}
