//! The built-in `whoami` upstream: answers with the method, path, query and every header
//! it received, as JSON, so a newcomer sees exactly what an upstream behind the gateway
//! would see. It reads (and counts) the request body without keeping it; a body that
//! outgrows `max_body_size` gets 413 and a broken one 400, as on a proxied route.

use http::header::CONTENT_TYPE;
use http::{HeaderValue, Request, Response};
use http_body_util::BodyExt;
use serde_json::{Map, Value};

use super::headers::X_REQUEST_ID;
use crate::response::{client_body_fault, full, Body, Reject};

/// Echoes `req` as JSON.
pub async fn respond(req: Request<Body>) -> Response<Body> {
    let (parts, mut body) = req.into_parts();
    let mut headers = Map::new();
    for name in parts.headers.keys() {
        let values: Vec<String> = parts
            .headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        headers.insert(name.as_str().to_owned(), Value::String(values.join(", ")));
    }
    let mut body_bytes: u64 = 0;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => body_bytes += f.data_ref().map_or(0, |d| d.len() as u64),
            Err(e) => {
                let reject = client_body_fault(&*e).unwrap_or(Reject::BadRequest);
                return reject.into_response(parts.headers.get(&X_REQUEST_ID));
            }
        }
    }
    let echo = serde_json::json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": headers,
        "body_bytes": body_bytes,
    });
    let mut response = Response::new(full(echo.to_string()));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
