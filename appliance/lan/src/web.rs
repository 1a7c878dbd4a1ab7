//! The plain-HTTP side when HTTPS is on, and the certificate page.
//!
//! On plain HTTP every request is redirected (308) to the same host and path on HTTPS, except
//! `/certificate` (a page explaining the box's own certificate, with its SHA-256 fingerprint),
//! `/certificate.crt` (the device CA, DER, `application/x-x509-ca-cert`) and `/healthz`. A
//! person must be able to read the fingerprint *before* their browser has any reason to trust
//! the box; that is why the page is also on plain HTTP. Both certificate routes are also
//! meant to be merged into the HTTPS app ([`certificate_routes`]).

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::DeviceIdentity;

#[derive(Clone)]
struct CertState {
    identity: Arc<DeviceIdentity>,
    https_port: u16,
}

/// `GET /certificate` and `GET /certificate.crt`, with no state of their own: merge into any
/// router. `https_port` is the port the page's "continue" link points to.
pub fn certificate_routes(identity: Arc<DeviceIdentity>, https_port: u16) -> Router {
    Router::new()
        .route("/certificate", get(certificate_page))
        .route("/certificate.crt", get(certificate_file))
        .with_state(CertState {
            identity,
            https_port,
        })
}

/// The router for plain HTTP when HTTPS is on: the certificate routes, `/healthz`, and a 308
/// to `https://<same host>[:https_port]<same path and query>` for everything else.
pub fn http_redirect_router(identity: Arc<DeviceIdentity>, https_port: u16) -> Router {
    certificate_routes(identity, https_port)
        .route(
            "/healthz",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "application/json")],
                    r#"{"status":"ok"}"#,
                )
            }),
        )
        .fallback(move |headers: HeaderMap, uri: Uri| async move {
            redirect(&headers, &uri, https_port)
        })
}

fn redirect(headers: &HeaderMap, uri: &Uri, https_port: u16) -> Response {
    let Some(host) = request_host(headers) else {
        return (
            StatusCode::BAD_REQUEST,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "missing or invalid Host header\n",
        )
            .into_response();
    };
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let location = format!("https://{}{}", authority(&host, https_port), path);
    match HeaderValue::from_str(&location) {
        Ok(value) => (
            StatusCode::PERMANENT_REDIRECT,
            [(header::LOCATION, value)],
            Body::empty(),
        )
            .into_response(),
        Err(_) => StatusCode::BAD_REQUEST.into_response(),
    }
}

fn authority(host: &str, https_port: u16) -> String {
    if https_port == 443 {
        host.to_owned()
    } else {
        format!("{host}:{https_port}")
    }
}

/// The request's host without the port, lowercase: a DNS name (letters, digits, `-`, `.`),
/// an IPv4 address, or a bracketed IPv6 address. Anything else is `None`, so nothing odd
/// from a `Host` header ever reaches a `Location` header or the page.
pub fn request_host(headers: &HeaderMap) -> Option<String> {
    let raw = headers.get(header::HOST)?.to_str().ok()?.trim();
    let host = if let Some(rest) = raw.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        let ip: std::net::Ipv6Addr = inside.parse().ok()?;
        return Some(format!("[{ip}]"));
    } else {
        match raw.split_once(':') {
            Some((h, port)) if is_port(port) => h,
            Some(_) => return None,
            None => raw,
        }
    };
    let ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !host.starts_with(['.', '-']);
    ok.then(|| host.to_ascii_lowercase())
}

fn is_port(s: &str) -> bool {
    !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit())
}

fn security_headers() -> [(header::HeaderName, &'static str); 5] {
    [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
    ]
}

async fn certificate_file(State(state): State<CertState>) -> Response {
    (
        security_headers(),
        [
            (header::CONTENT_TYPE, "application/x-x509-ca-cert"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"hearth-box.crt\"",
            ),
        ],
        state.identity.ca_der().to_vec(),
    )
        .into_response()
}

async fn certificate_page(State(state): State<CertState>, headers: HeaderMap) -> Response {
    let fingerprint = state.identity.fingerprint();
    let names: Vec<String> = state
        .identity
        .server_names()
        .into_iter()
        .map(|n| format!("<li><code>{}</code></li>", escape(&n)))
        .collect();
    let open = request_host(&headers).map(|h| {
        let url = format!("https://{}/", authority(&h, state.https_port));
        format!(
            "<p><a href=\"{u}\">Continue to {u}</a></p>",
            u = escape(&url)
        )
    });
    let body = format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>This box's certificate — Hearth</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 40rem; margin: 1rem auto; padding: 0 1rem; line-height: 1.5; }}
code {{ overflow-wrap: anywhere; }}
.fp {{ font-family: ui-monospace, monospace; font-size: 1.05rem; padding: .5rem; border: 1px solid; overflow-wrap: anywhere; }}
@media (prefers-color-scheme: dark) {{ body {{ background: #111; color: #eee; }} a {{ color: #8bf; }} }}
</style>
</head>
<body>
<h1>This box's certificate</h1>
<p>Hearth encrypts the connection between your device and this box with HTTPS. The box has no
internet access, so no public authority can vouch for it: it made its own certificate
authority the first time it started. Your browser warns about it until you tell it to trust
this box.</p>
<h2>Check the fingerprint</h2>
<p>The SHA-256 fingerprint of this box's certificate is:</p>
<p class="fp" id="fingerprint">{fingerprint}</p>
<p>It must match the fingerprint on the box's label (or in its log). If it does not, you are
not talking to your box: do not continue.</p>
<h2>Trust it</h2>
<p><a href="/certificate.crt" download="hearth-box.crt">Download the certificate</a> and
install it as a trusted certificate authority:</p>
<ul>
<li>Android: Settings → Security → Encryption &amp; credentials → Install a certificate → CA certificate.</li>
<li>iPhone/iPad: open the downloaded profile in Settings, install it, then enable it in
General → About → Certificate Trust Settings.</li>
<li>Windows: open the file → Install Certificate → Local Machine → Trusted Root Certification Authorities.</li>
<li>macOS: open it in Keychain Access, then set “When using this certificate” to Always Trust.</li>
<li>Firefox: Settings → Privacy &amp; Security → Certificates → View Certificates → Authorities → Import.</li>
</ul>
<p>This certificate can only vouch for names ending in <code>.local</code>, <code>localhost</code>,
the box's configured names and private network addresses, never for other websites.</p>
<h2>Names the box answers to</h2>
<ul>
{names}
</ul>
{open}
</body>
</html>
"#,
        names = names.join("\n"),
        open = open.unwrap_or_default(),
    );
    (
        security_headers(),
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(h: &str) -> Option<String> {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_str(h).unwrap());
        request_host(&headers)
    }

    #[test]
    fn host_header_parsing_accepts_names_and_addresses_only() {
        let table = [
            ("hearth.local", Some("hearth.local")),
            ("Hearth.Local:8080", Some("hearth.local")),
            ("10.0.0.5:80", Some("10.0.0.5")),
            ("[fd00::5]:8443", Some("[fd00::5]")),
            ("[::1]", Some("[::1]")),
            ("[nope]:80", None),
            ("[::1]x", None),
            ("evil.example/x", None),
            ("a b", None),
            ("host:port", None),
            ("host:123456", None),
            ("", None),
            (".local", None),
            ("x\"onload=", None),
        ];
        for (input, want) in table {
            assert_eq!(host(input).as_deref(), want, "{input}");
        }
    }

    #[test]
    fn escape_html() {
        assert_eq!(
            escape(r#"<a href="x">&'"#),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
