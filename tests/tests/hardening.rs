//! SPEC §1.9 on a real socket against the real `kernex-server`: headers trickled past the
//! header timeout (plain and TLS), request bodies and downloads that stop moving, the
//! connection cap, the event stream outliving the request budget, and a hostile archive
//! that must not raise the server's peak memory. Timeouts are set short by the hidden
//! flags, so every test ends in a few seconds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kernex_common::bundle::testing::{EntryType, extension_header_bundle};
use kernex_tests::ServerProcess;

const ADMIN: &str = "e2e-admin";
const ENROLL: &str = "e2e-enroll";

fn server(extra: &[&str]) -> (tempfile::TempDir, ServerProcess) {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_with(dir.path(), ADMIN, ENROLL, extra).unwrap();
    (dir, server)
}

fn connect(server: &ServerProcess) -> TcpStream {
    let s = TcpStream::connect(&server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Read until the peer closes (or the read timeout); what arrived.
fn read_all(s: &mut impl Read) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// A whole request on its own connection (`Connection: close`); the whole response.
fn exchange(server: &ServerProcess, request: &[u8]) -> String {
    let mut s = connect(server);
    s.write_all(request).unwrap();
    String::from_utf8_lossy(&read_all(&mut s)).into_owned()
}

fn get(path: &str, auth: Option<&str>) -> Vec<u8> {
    let auth = auth.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    format!("GET {path} HTTP/1.1\r\nHost: kernex\r\n{auth}Connection: close\r\n\r\n").into_bytes()
}

/// Send a request head one header line at a time, every 200 ms, for up to 6 s; how long
/// the server took to close the connection, and what it answered.
fn trickle_headers<S: Read + Write>(
    stream: &mut S,
    set_timeout: impl Fn(&S, Duration),
) -> (Duration, Vec<u8>) {
    let started = Instant::now();
    let mut got = Vec::new();
    let mut first = true;
    while started.elapsed() < Duration::from_secs(6) {
        let line: &[u8] = if first {
            b"GET /healthz HTTP/1.1\r\nHost: kernex\r\n"
        } else {
            b"X-Slow: still-coming\r\n"
        };
        first = false;
        if stream
            .write_all(line)
            .and_then(|()| stream.flush())
            .is_err()
        {
            return (started.elapsed(), got);
        }
        set_timeout(stream, Duration::from_millis(200));
        let mut buf = [0u8; 4096];
        match stream.read(&mut buf) {
            Ok(0) => return (started.elapsed(), got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return (started.elapsed(), got),
        }
    }
    panic!("the connection was still open after 6 s of trickled headers");
}

/// The review's probe: headers trickled for 50 s were still served.
#[test]
fn trickled_headers_are_cut_off_at_the_header_timeout() {
    let (_dir, server) = server(&["--header-timeout", "1s"]);
    let mut s = connect(&server);
    let (closed_after, got) = trickle_headers(&mut s, |s, t| {
        s.set_read_timeout(Some(t)).unwrap();
    });
    assert!(
        closed_after >= Duration::from_millis(800) && closed_after < Duration::from_secs(4),
        "closed after {closed_after:?}"
    );
    assert!(
        !String::from_utf8_lossy(&got).contains(" 200 "),
        "a trickled request was served"
    );
    // A prompt request is served as ever.
    assert!(exchange(&server, &get("/healthz", None)).starts_with("HTTP/1.1 200"));
}

/// The same over TLS: a client that never starts the handshake, and one that trickles
/// its headers once the handshake is done.
#[test]
fn tls_connections_get_the_same_header_timeout() {
    let tls = kernex_tests::workspace_root().join("fixtures/tls");
    let (cert, key) = (tls.join("server.pem"), tls.join("server.key"));
    let (_dir, server) = server(&[
        "--header-timeout",
        "1s",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);

    let mut silent = connect(&server);
    let started = Instant::now();
    assert!(read_all(&mut silent).is_empty());
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "handshake timer"
    );

    let _ = rustls::crypto::ring::default_provider().install_default();
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(tls.join("ca.pem")).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let conn =
        rustls::ClientConnection::new(Arc::new(config), "localhost".try_into().unwrap()).unwrap();
    let mut stream = rustls::StreamOwned::new(conn, connect(&server));
    let (closed_after, got) = trickle_headers(&mut stream, |s, t| {
        s.sock.set_read_timeout(Some(t)).unwrap();
    });
    assert!(
        closed_after < Duration::from_secs(4),
        "closed after {closed_after:?}"
    );
    assert!(!String::from_utf8_lossy(&got).contains(" 200 "));
}

/// The review's probe: an idle register body stayed open past 40 s.
#[test]
fn a_stalled_request_body_gets_408() {
    let (_dir, server) = server(&["--stall-timeout", "1s"]);
    for (path, content_type) in [
        ("/api/v1/devices/register", "application/json"),
        // Uploads have no request budget; the minimum rate still applies.
        ("/api/v1/bundles", "multipart/form-data; boundary=x"),
    ] {
        let mut s = connect(&server);
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: kernex\r\nAuthorization: Bearer {ADMIN}\r\n\
             Content-Type: {content_type}\r\nContent-Length: 100000\r\n\r\n{{\"publ"
        );
        s.write_all(head.as_bytes()).unwrap();
        let started = Instant::now();
        let answer = String::from_utf8_lossy(&read_all(&mut s)).into_owned();
        assert!(answer.starts_with("HTTP/1.1 408"), "{path}: {answer}");
        assert!(
            answer.contains("\"error\""),
            "the usual JSON body: {answer}"
        );
        assert!(started.elapsed() < Duration::from_secs(5), "{path}");
    }
}

/// A download whose client stops reading is cut off instead of holding the
/// connection (and its file) forever.
#[test]
fn a_download_the_client_stops_reading_is_cut_off() {
    let (_dir, server) = server(&["--stall-timeout", "1s"]);
    let src = tempfile::tempdir().unwrap();
    std::fs::write(
        src.path().join("manifest.json"),
        r#"{"name":"big","version":"1.0.0","deploy":{"script":"deploy.sh"}}"#,
    )
    .unwrap();
    std::fs::write(src.path().join("deploy.sh"), "#!/bin/sh\nexit 0\n").unwrap();
    // Incompressible, and more than loopback's socket buffers hold.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let noise: Vec<u8> = (0..48 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(src.path().join("model.bin"), noise).unwrap();
    let mut archive = Vec::new();
    kernex_common::bundle::pack(src.path(), &mut archive).unwrap();
    let answer = exchange(&server, &multipart_upload(&archive));
    assert!(
        answer.starts_with("HTTP/1.1 201"),
        "{}",
        &answer[..200.min(answer.len())]
    );
    let id = answer
        .split("\"id\":\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .to_owned();

    let mut s = connect(&server);
    s.write_all(&get(&format!("/api/v1/bundles/{id}"), Some(ADMIN)))
        .unwrap();
    // Read nothing for a while: the server's writes stall, and it gives up.
    std::thread::sleep(Duration::from_secs(4));
    let got = read_all(&mut s);
    assert!(
        got.len() < archive.len(),
        "all {} bytes arrived; the connection was not cut",
        got.len()
    );
}

fn multipart_upload(archive: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(
        b"--x\r\nContent-Disposition: form-data; name=\"file\"; filename=\"b.tar.gz\"\r\n\
          Content-Type: application/gzip\r\n\r\n",
    );
    body.extend_from_slice(archive);
    body.extend_from_slice(b"\r\n--x--\r\n");
    let mut req = format!(
        "POST /api/v1/bundles HTTP/1.1\r\nHost: kernex\r\nAuthorization: Bearer {ADMIN}\r\n\
         Content-Type: multipart/form-data; boundary=x\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    req
}

#[test]
fn max_connections_caps_open_connections() {
    let (_dir, server) = server(&["--max-connections", "2"]);
    let first = connect(&server);
    let _second = connect(&server);
    let mut third = connect(&server);
    third.write_all(&get("/healthz", None)).unwrap();
    third
        .set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    let mut buf = [0u8; 512];
    match third.read(&mut buf) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        other => panic!("a third connection was served past the cap: {other:?}"),
    }
    // A place frees up: the waiting connection is served.
    drop(first);
    third
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let answer = String::from_utf8_lossy(&read_all(&mut third)).into_owned();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// The event stream and the request budget: the stream outlives it.
#[test]
fn the_event_stream_is_not_cut_by_the_request_budget() {
    let (_dir, server) = server(&["--request-timeout", "500ms"]);
    let mut s = connect(&server);
    s.write_all(&get("/api/v1/events", Some(ADMIN))).unwrap();
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    match s.read(&mut buf) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        Ok(n) if n > 0 => {}
        other => panic!("the event stream ended at the request budget: {other:?}"),
    }
    // An ordinary request on the same server is still within its budget.
    assert!(exchange(&server, &get("/healthz", None)).starts_with("HTTP/1.1 200"));
}

/// Peak resident memory of a process, in KiB.
fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status")
}

/// The review's probe: a 96 KB upload whose PAX header unpacked to 130 MB raised the
/// server's peak RSS from 10 MB to 141 MB, and was accepted.
#[cfg(target_os = "linux")]
#[test]
fn a_hostile_pax_header_is_refused_without_raising_peak_memory() {
    let (_dir, server) = server(&[]);
    // Warm up the upload path with a refused archive, then take the baseline.
    let small = extension_header_bundle(EntryType::XHeader, 100 * 1024).unwrap();
    let answer = exchange(&server, &multipart_upload(&small));
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("extension header"), "{answer}");
    let before = vm_hwm_kib(server.pid());

    // 256 MiB of header in a ~260 KB upload.
    let hostile = extension_header_bundle(EntryType::XHeader, 256 << 20).unwrap();
    let answer = exchange(&server, &multipart_upload(&hostile));
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("extension header"), "{answer}");
    let long_name = extension_header_bundle(EntryType::GNULongName, 256 << 20).unwrap();
    let answer = exchange(&server, &multipart_upload(&long_name));
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let after = vm_hwm_kib(server.pid());
    eprintln!(
        "server VmHWM: {before} KiB before, {after} KiB after two {} KB uploads with 256 MiB extension headers (PAX, GNU long name)",
        hostile.len() / 1000
    );
    assert!(
        after - before < 16 * 1024,
        "peak RSS grew by {} KiB",
        after - before
    );
}
