//! Which server URLs a client may use (SPEC §7 "Transport"): `https://` anywhere, plain
//! `http://` only to a loopback address unless the operator says `--insecure-http`.
//! A bundle command, a device token and an operator token all travel over this link.

use std::net::IpAddr;

/// `Err` with a message naming the fix when `url` is plain HTTP to a host that is not
/// loopback and `insecure_http` is off.
pub fn check_server_url(url: &str, insecure_http: bool) -> Result<(), String> {
    let url = url.trim();
    let Some(rest) = strip_scheme(url, "http://") else {
        return Ok(()); // https:// (or a malformed URL the HTTP client refuses itself)
    };
    if insecure_http || is_loopback_host(host_of(rest)) {
        return Ok(());
    }
    Err(format!(
        "refusing plain http:// to {url}: only loopback addresses may be reached without \
         TLS; use https:// (with --ca-cert for a private CA), or pass --insecure-http to \
         accept that anyone on the network path can read and change the traffic"
    ))
}

fn strip_scheme<'a>(url: &'a str, scheme: &str) -> Option<&'a str> {
    let head = url.get(..scheme.len())?;
    head.eq_ignore_ascii_case(scheme)
        .then(|| &url[scheme.len()..])
}

/// The host of `authority[/path]`, without userinfo, port or IPv6 brackets.
fn host_of(rest: &str) -> &str {
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    if let Some(v6) = host_port.strip_prefix('[') {
        return v6.split(']').next().unwrap_or_default();
    }
    host_port.split(':').next().unwrap_or_default()
}

fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_end_matches('.');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_http_and_any_https_pass() {
        for ok in [
            "http://127.0.0.1:8000",
            "http://127.8.9.1/",
            "http://localhost:1",
            "HTTP://LOCALHOST",
            "http://[::1]:8000/x",
            "http://user:pw@127.0.0.1:80",
            "https://fleet.example.com",
            "https://10.0.0.5:8443",
        ] {
            assert!(check_server_url(ok, false).is_ok(), "{ok}");
        }
    }

    #[test]
    fn plain_http_off_loopback_is_refused_unless_insecure() {
        for bad in [
            "http://10.0.0.5:8000",
            "http://fleet.example.com",
            "http://localhost.evil.com",
            "http://127.0.0.1@evil.com/",
            "http://[2001:db8::1]:80",
            "http://0.0.0.0:8000",
        ] {
            let e = check_server_url(bad, false).unwrap_err();
            assert!(e.contains("--insecure-http"), "{bad}: {e}");
            assert!(check_server_url(bad, true).is_ok(), "{bad}");
        }
    }
}
