//! Raw HTTP/1.1 exchanges: request targets written byte for byte on a TCP socket, so no
//! client library normalizes them first (`/public/%2e%2e/api/x`), and the answer parsed
//! off the socket.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// An HTTP/1.1 response read off a socket.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    /// Names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    /// Parses a response whose body has a `Content-Length`, is chunked, or ends with the
    /// connection.
    pub fn parse(bytes: &[u8]) -> Option<RawResponse> {
        let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = std::str::from_utf8(&bytes[..end]).ok()?;
        let mut lines = head.split("\r\n");
        let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let mut body = bytes[end + 4..].to_vec();
        let chunked = headers
            .iter()
            .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
        if chunked {
            body = dechunk(&body)?;
        }
        Some(RawResponse {
            status,
            headers,
            body,
        })
    }

    /// The first value of header `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// Checks the gateway's JSON envelope and returns its `code`.
    pub fn code(&self) -> String {
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{self:?}"
        );
        let body = self.json();
        assert_eq!(
            body["requestId"].as_str(),
            self.header("x-request-id"),
            "requestId is the x-request-id header"
        );
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
        body["code"].as_str().expect("code").to_owned()
    }

    /// Asserts 400 `BAD_REQUEST` in the envelope.
    pub fn assert_refused(&self, attack: &str) {
        assert_eq!(self.status, 400, "{attack}: {self:?}");
        assert_eq!(self.code(), "BAD_REQUEST", "{attack}");
    }

    /// Asserts 401 `MISSING_CREDENTIALS`: the protected route decided.
    pub fn assert_needs_a_token(&self, attack: &str) {
        assert_eq!(self.status, 401, "{attack}: {self:?}");
        assert_eq!(self.code(), "MISSING_CREDENTIALS", "{attack}");
    }
}

fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&body[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(body.get(..size)?);
        body = body.get(size + 2..)?;
    }
}

/// Writes `head` (a whole request head, ending in an empty line) on a new connection to
/// `addr` and reads the answer to the end (the head should ask `Connection: close`),
/// bounded by 10 s.
pub async fn exchange(addr: SocketAddr, head: &str) -> RawResponse {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(head.as_bytes()).await.expect("write");
        let mut bytes = Vec::new();
        stream.read_to_end(&mut bytes).await.expect("read");
        bytes
    };
    let first_line = head.lines().next().unwrap_or("");
    let bytes = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .unwrap_or_else(|_| panic!("no answer to {first_line:?}"));
    RawResponse::parse(&bytes).unwrap_or_else(|| {
        panic!(
            "{first_line:?}: not an HTTP/1.1 answer: {:?}",
            String::from_utf8_lossy(&bytes)
        )
    })
}

/// `GET {target} HTTP/1.1` with `Host: app.test`, `Connection: close` and `headers`.
pub async fn raw_get(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> RawResponse {
    let mut head = format!("GET {target} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    exchange(addr, &head).await
}
