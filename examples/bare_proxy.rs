//! The calibration row of `benches/load.sh`: a reverse proxy made of hyper and
//! hyper-util's pooled client and nothing else — no routing, no header hygiene, no request
//! ids, no metrics, no timeouts. It is the floor for any proxy built on the crates the
//! gateway is built on, so the load table can say how much of the gateway's cost is its own
//! layers and how much is hyper's.
//!
//! ```text
//! cargo run --release --example bare_proxy -- 127.0.0.1:8081 127.0.0.1:9000
//! ```
//!
//! HTTP/1.1 with keep-alive on both sides, on the same multi-threaded runtime the gateway
//! uses (one worker per core the process may run on, so `taskset` decides how many). Not a
//! product: it trusts every byte it is sent.

use std::convert::Infallible;
use std::net::SocketAddr;

use http::uri::{Authority, Scheme};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

type Body = http_body_util::combinators::BoxBody<bytes::Bytes, hyper::Error>;

async fn forward(
    client: Client<HttpConnector, Incoming>,
    upstream: Authority,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let mut parts = req.uri().clone().into_parts();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(upstream);
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some("/".parse().expect("a path"));
    }
    *req.uri_mut() = Uri::from_parts(parts).expect("an absolute URI");
    Ok(match client.request(req).await {
        Ok(response) => response.map(BodyExt::boxed),
        Err(_) => {
            let mut response = Response::new(Empty::new().map_err(|e| match e {}).boxed());
            *response.status_mut() = StatusCode::BAD_GATEWAY;
            response
        }
    })
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: bare_proxy LISTEN_ADDR UPSTREAM_ADDR";
    let listen: SocketAddr = args.next().and_then(|a| a.parse().ok()).expect(usage);
    let upstream: Authority = args.next().and_then(|a| a.parse().ok()).expect(usage);
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1024)
        .build(connector);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let (client, upstream) = (client.clone(), upstream.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req| forward(client.clone(), upstream.clone(), req));
            // A client that goes away mid-exchange is no news for a benchmark.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
