//! Reading a supervisor API request (basic auth, node headers, the CSR body) and writing its
//! answer: each problem named, for a 400 that says which field.

use std::net::IpAddr;

use base64::Engine;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};

use super::authority::Authority;

pub(super) type Answer = Response<Full<Bytes>>;

pub(super) fn answer(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Answer {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

pub(super) fn text(status: StatusCode, body: impl Into<String>) -> Answer {
    let mut body = body.into();
    if !body.ends_with('\n') {
        body.push('\n');
    }
    answer(status, "text/plain; charset=utf-8", body)
}

/// 429 with a hint when to come back.
pub(super) fn too_many(why: &str) -> Answer {
    let mut r = text(StatusCode::TOO_MANY_REQUESTS, why);
    r.headers_mut().insert(
        hyper::header::RETRY_AFTER,
        hyper::header::HeaderValue::from_static("5"),
    );
    r
}

/// The user of a basic-auth header whose password is the token's, in constant time.
pub(super) fn authenticated(req: &Request<Incoming>, authority: &Authority) -> Option<String> {
    let value = req
        .headers()
        .get(hyper::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    let ok = aws_lc_rs::constant_time::verify_slices_are_equal(
        password.as_bytes(),
        authority.password.as_bytes(),
    )
    .is_ok();
    (ok && (user == "node" || user == "server")).then(|| user.to_string())
}

/// Header `name` exactly once and not empty, else why not.
pub(super) fn one_header<'a>(req: &'a Request<Incoming>, name: &str) -> Result<&'a str, String> {
    let mut values = req.headers().get_all(name).iter();
    match (values.next(), values.next()) {
        (Some(v), None) => match v.to_str() {
            Ok(s) if !s.trim().is_empty() => Ok(s.trim()),
            _ => Err(format!("header {name}: empty or not text")),
        },
        (None, _) => Err(format!("header {name} is missing")),
        (Some(_), Some(_)) => Err(format!("header {name} is given more than once")),
    }
}

/// The addresses of `<program>-Node-IP` (a comma list), if given.
pub(super) fn node_ips(req: &Request<Incoming>, program: &str) -> Result<Vec<IpAddr>, String> {
    let name = format!("{program}-Node-IP");
    let mut ips = Vec::new();
    for v in req.headers().get_all(name.as_str()) {
        let s = v.to_str().map_err(|_| format!("header {name}: not text"))?;
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let ip: IpAddr = part
                .parse()
                .map_err(|_| format!("header {name}: {part:?} is not an IP address"))?;
            let ip = crate::facts::canonical_ip(ip);
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
    }
    if ips.len() > 16 {
        return Err(format!(
            "header {name}: {} addresses (at most 16)",
            ips.len()
        ));
    }
    Ok(ips)
}

/// The CSR of a body: DER, or PEM.
pub(super) fn csr_der(body: &[u8]) -> Result<Vec<u8>, String> {
    if body.is_empty() {
        return Err(
            "body: empty; send a certificate signing request made with the node's key".into(),
        );
    }
    let trimmed = body.trim_ascii_start();
    if trimmed.starts_with(b"-----BEGIN") {
        let body = trimmed;
        let blocks = crate::facts::read_pem_blocks("body", body).map_err(|e| e.to_string())?;
        let mut csrs = blocks
            .into_iter()
            .filter(|b| b.kind == crate::facts::PemKind::CertificateRequest);
        return match (csrs.next(), csrs.next()) {
            (Some(b), None) => Ok(b.der),
            _ => Err("body: not exactly one PEM CERTIFICATE REQUEST".into()),
        };
    }
    crate::facts::parse_csr_der("body", body)
        .map(|_| body.to_vec())
        .map_err(|e| format!("body: not a certificate signing request (DER or PEM): {e}"))
}
