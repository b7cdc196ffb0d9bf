//! `[telemetry]`: OpenTelemetry traces (see `crate::telemetry::trace`).

use http::Uri;
use serde::{Deserialize, Serialize};

use super::validate::Errors;

/// `[telemetry]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTelemetry {
    otlp_endpoint: Option<String>,
    service_name: Option<String>,
    sample_ratio: Option<f64>,
}

/// `[telemetry]`, validated. `Default` holds the defaults (tracing off); `Serialize` is
/// the effective configuration's `[telemetry]` table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TelemetrySettings {
    /// The collector's OTLP/HTTP base URL (`http://collector:4318`); spans are posted to
    /// `{otlp_endpoint}/v1/traces`. `None` (default): tracing is off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
    /// `service.name` of every span. Default `cloudbase-gateway`.
    pub service_name: String,
    /// Share of new traces recorded, 0.0 to 1.0; a client's own sampling decision is
    /// followed. Default 1.0.
    pub sample_ratio: f64,
}

impl TelemetrySettings {
    /// Where spans are posted: the endpoint with `/v1/traces` appended, unless it already
    /// ends so (the OTLP exporter convention for base and signal URLs).
    pub fn traces_url(&self) -> Option<String> {
        let base = self.otlp_endpoint.as_deref()?.trim_end_matches('/');
        Some(if base.ends_with("/v1/traces") {
            base.to_owned()
        } else {
            format!("{base}/v1/traces")
        })
    }
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        TelemetrySettings {
            otlp_endpoint: None,
            service_name: "cloudbase-gateway".to_owned(),
            sample_ratio: 1.0,
        }
    }
}

pub(super) fn validate(raw: RawTelemetry, errors: &mut Errors) -> TelemetrySettings {
    let d = TelemetrySettings::default();
    let otlp_endpoint = raw
        .otlp_endpoint
        .and_then(|url| match check_otlp_endpoint(&url) {
            Ok(()) => Some(url),
            Err(e) => {
                errors.push("telemetry.otlp_endpoint", e);
                None
            }
        });
    let service_name = raw.service_name.unwrap_or(d.service_name);
    if service_name.trim().is_empty() {
        errors.push("telemetry.service_name", "must not be empty");
    }
    let sample_ratio = match raw.sample_ratio {
        None => d.sample_ratio,
        Some(r) if (0.0..=1.0).contains(&r) => r,
        Some(r) => {
            errors.push(
                "telemetry.sample_ratio",
                format!("{r} is not a share between 0.0 and 1.0"),
            );
            d.sample_ratio
        }
    };
    TelemetrySettings {
        otlp_endpoint,
        service_name,
        sample_ratio,
    }
}

/// An `http://` or `https://` URL with a host, and no credentials (they would be printed
/// by `check`; a collector's token goes in `OTEL_EXPORTER_OTLP_HEADERS`), query or
/// fragment.
fn check_otlp_endpoint(url: &str) -> Result<(), String> {
    let bad = |why: &str| {
        format!("{url:?} is not a collector URL like \"http://collector:4318\" ({why})")
    };
    let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(bad("the scheme must be http or https"));
    }
    let authority = uri.authority().ok_or_else(|| bad("no host"))?;
    if authority.as_str().contains('@') {
        // Not echoed: the value holds a credential.
        return Err(
            "credentials do not belong in the URL (it would be printed): send them with \
             OTEL_EXPORTER_OTLP_HEADERS"
                .to_owned(),
        );
    }
    if uri.query().is_some() || url.contains('#') {
        return Err(bad("no query or fragment"));
    }
    Ok(())
}
