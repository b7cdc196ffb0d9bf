//! Bodies stream through the gateway binary in both directions: a 50 MiB upload and a
//! 50 MiB download pass while the gateway's peak memory stays far below 50 MiB.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::support::*;
use bytes::Bytes;
use futures_util::StreamExt;
use http::Response;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;

const SIZE: u64 = 50 << 20;
const CHUNK: usize = 64 << 10;

fn chunks() -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    let chunk = Bytes::from(vec![b'z'; CHUNK]);
    futures_util::stream::iter((0..SIZE as usize / CHUNK).map(move |_| Ok(chunk.clone())))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_mib_up_and_down_with_memory_far_below_that() {
    let received = Arc::new(AtomicU64::new(0));
    let seen = received.clone();
    let (upstream, _) = spawn_upstream(move |req: http::Request<hyper::body::Incoming>| {
        let seen = seen.clone();
        async move {
            if req.uri().path().ends_with("/download") {
                let stream = chunks().map(|c| c.map(Frame::data).map_err(Into::into));
                return Response::new(StreamBody::new(stream).boxed_unsync());
            }
            let mut body = req.into_body();
            while let Some(Ok(frame)) = body.frame().await {
                if let Some(d) = frame.data_ref() {
                    seen.fetch_add(d.len() as u64, Ordering::SeqCst);
                }
            }
            Response::new(cloudbase_gateway::http::full("stored"))
        }
    })
    .await;
    let port = free_port();
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nmax_body_size = \"64MiB\"\n\
         [admin]\nlisten = \"127.0.0.1:{}\"\n\
         [cloudbase]\nbase_url = \"http://127.0.0.1:9/auth/v1\"\n\
         [[routes]]\nprefix = \"/files/\"\nupstream = \"http://{upstream}\"\nauth = \"none\"\n",
        free_port()
    );
    let gateway = Process::spawn(
        &config,
        &[],
        &[],
        format!("127.0.0.1:{port}").parse().unwrap(),
    );
    let baseline = gateway.peak_rss();
    let http = reqwest::Client::new();

    let r = http
        .post(format!("http://127.0.0.1:{port}/files/upload"))
        .body(reqwest::Body::wrap_stream(chunks()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        received.load(Ordering::SeqCst),
        SIZE,
        "the whole upload arrived"
    );

    let r = http
        .get(format!("http://127.0.0.1:{port}/files/download"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut stream = r.bytes_stream();
    let mut got = 0u64;
    while let Some(chunk) = stream.next().await {
        got += chunk.unwrap().len() as u64;
    }
    assert_eq!(got, SIZE, "the whole download arrived");

    let peak = gateway.peak_rss();
    eprintln!(
        "gateway peak RSS: {} KiB at start, {} KiB after 2 x 50 MiB",
        baseline >> 10,
        peak >> 10
    );
    assert!(
        peak - baseline < 16 << 20,
        "the gateway buffered: peak RSS grew by {} KiB",
        (peak - baseline) >> 10
    );
}
