//! A TCP fault proxy to put between real agents and the real server: it forwards bytes
//! both ways until a [`Rule`] says otherwise — stall, reset, truncate, black-hole or
//! slow-drip, for one direction, after a byte offset — and the rules can be switched
//! while connections are open. It also notes every HTTP request head it forwards (method,
//! path, `Range`) and how many reply bytes each got, so a test can see what the agent did.
//!
//! ```no_run
//! # async fn demo(server: &kernex_tests::ServerProcess) {
//! use kernex_tests::fault_proxy::{Direction, Fault, FaultProxy, Rule};
//! let proxy = FaultProxy::start(&server.addr).await.unwrap();
//! // Reset the next 5 bundle downloads 64 KiB into their reply.
//! proxy.set(vec![Rule::new(Direction::ToClient, Fault::Reset).after(65_536)
//!     .matching("/bundles/").times(5)]);
//! # }
//! ```
//!
//! Offsets count from the start of the connection, or — for a rule with
//! [`Rule::matching`] — from the start of the request that matched (connections are
//! kept alive, so one may carry heartbeats before a download).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Which way the bytes travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Agent → server (requests).
    ToServer,
    /// Server → agent (replies).
    ToClient,
}

/// What happens once a rule's offset is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Stop forwarding (and reading) this direction; the connection stays open.
    Stall,
    /// Abort both sides with a TCP RST.
    Reset,
    /// Close both sides cleanly (FIN): the peer sees a short message.
    Truncate,
    /// Read and discard everything from here on; never close.
    BlackHole,
    /// Forward `bytes` bytes per `every`.
    SlowDrip { bytes: usize, every: Duration },
}

/// When and how to break a connection.
#[derive(Debug, Clone)]
pub struct Rule {
    pub direction: Direction,
    pub fault: Fault,
    /// Bytes forwarded in `direction` before the fault begins.
    pub after: u64,
    /// Only for requests whose head contains this (`/bundles/`, `/result`).
    pub matching: Option<String>,
    /// How many more times the rule may fire; `None`: every time until replaced.
    pub times: Option<u32>,
}

impl Rule {
    /// `fault` in `direction` from the first byte, on every connection.
    pub fn new(direction: Direction, fault: Fault) -> Self {
        Rule {
            direction,
            fault,
            after: 0,
            matching: None,
            times: None,
        }
    }

    #[must_use]
    pub fn after(mut self, bytes: u64) -> Self {
        self.after = bytes;
        self
    }

    #[must_use]
    pub fn matching(mut self, needle: &str) -> Self {
        self.matching = Some(needle.to_owned());
        self
    }

    #[must_use]
    pub fn times(mut self, n: u32) -> Self {
        self.times = Some(n);
        self
    }
}

/// One HTTP request the proxy forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Which accepted connection carried it (0, 1, …).
    pub connection: u64,
    /// `GET /api/v1/bundles/…`.
    pub line: String,
    /// The `Range` header's value, if any.
    pub range: Option<String>,
    /// Reply bytes forwarded to the agent for it.
    pub reply_bytes: u64,
}

impl Request {
    /// The first byte a `Range: bytes=N-` asked for.
    pub fn range_start(&self) -> Option<u64> {
        self.range
            .as_deref()?
            .strip_prefix("bytes=")?
            .split('-')
            .next()?
            .parse()
            .ok()
    }
}

#[derive(Debug, Default)]
struct Shared {
    rules: Vec<Rule>,
    requests: Vec<Request>,
    connections: u64,
    /// Faults that fired (rule index at the time, fault).
    fired: Vec<Fault>,
}

/// A running proxy; stops (closing every connection) when dropped.
pub struct FaultProxy {
    pub addr: String,
    shared: Arc<Mutex<Shared>>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    /// Listen on a free loopback port and forward to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let upstream = upstream.to_owned();
        let state = shared.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let id = {
                    let mut s = lock(&state);
                    s.connections += 1;
                    s.connections - 1
                };
                let state = state.clone();
                let upstream = upstream.clone();
                conns.spawn(async move {
                    if let Ok(server) = TcpStream::connect(&upstream).await {
                        Conn::new(id, state).run(client, server).await;
                    }
                });
                // Reap finished connections so the set does not grow without bound.
                while conns.try_join_next().is_some() {}
            }
        });
        Ok(FaultProxy { addr, shared, task })
    }

    /// The base URL agents should use.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Replace the rules (open connections follow the new ones from their next byte).
    pub fn set(&self, rules: Vec<Rule>) {
        lock(&self.shared).rules = rules;
    }

    /// Forward everything again.
    pub fn clear(&self) {
        self.set(Vec::new());
    }

    /// Every request forwarded so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        lock(&self.shared).requests.clone()
    }

    /// The requests whose line contains `needle`.
    pub fn requests_to(&self, needle: &str) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| r.line.contains(needle))
            .collect()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        lock(&self.shared).connections
    }

    /// The faults that fired so far, in order.
    pub fn fired(&self) -> Vec<Fault> {
        lock(&self.shared).fired.clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What the proxy does with one chunk read from one side.
enum Step {
    /// Forward the first `n` bytes (all, when `n` is the chunk's length).
    Forward(usize),
    /// Forward the first `n` bytes, then apply the fault.
    Then(usize, Fault),
}

/// One proxied connection.
struct Conn {
    id: u64,
    shared: Arc<Mutex<Shared>>,
    /// Bytes forwarded per direction since the connection opened.
    total: [u64; 2],
    /// Bytes forwarded per direction since the latest request head.
    exchange: [u64; 2],
    /// Index in `Shared::requests` of this connection's latest request.
    current: Option<usize>,
    /// Request bytes not yet parsed (a head split across reads).
    pending: Vec<u8>,
    /// Directions stalled, black-holed or closed.
    stalled: [bool; 2],
    holed: [bool; 2],
    eof: [bool; 2],
    /// A slow drip under way in a direction.
    drip: [Option<(usize, Duration)>; 2],
    /// A fault already fired in this direction for the current exchange.
    faulted: [bool; 2],
}

const fn slot(d: Direction) -> usize {
    match d {
        Direction::ToServer => 0,
        Direction::ToClient => 1,
    }
}

impl Conn {
    fn new(id: u64, shared: Arc<Mutex<Shared>>) -> Self {
        Conn {
            id,
            shared,
            total: [0; 2],
            exchange: [0; 2],
            current: None,
            pending: Vec::new(),
            stalled: [false; 2],
            holed: [false; 2],
            eof: [false; 2],
            drip: [None; 2],
            faulted: [false; 2],
        }
    }

    async fn run(mut self, mut client: TcpStream, mut server: TcpStream) {
        let mut up = vec![0u8; 16 * 1024];
        let mut down = vec![0u8; 16 * 1024];
        loop {
            let (dir, n) = {
                let read_up = !self.stalled[0] && !self.eof[0];
                let read_down = !self.stalled[1] && !self.eof[1];
                tokio::select! {
                    r = client.read(&mut up), if read_up => (Direction::ToServer, r),
                    r = server.read(&mut down), if read_down => (Direction::ToClient, r),
                    else => {
                        // Nothing left to read: stalled or closed both ways. Hold the
                        // connection (a stall) until the peer or the proxy goes away.
                        std::future::pending::<()>().await;
                        return;
                    }
                }
            };
            let n = match n {
                Ok(0) | Err(_) => {
                    self.eof[slot(dir)] = true;
                    let to = if dir == Direction::ToServer {
                        &mut server
                    } else {
                        &mut client
                    };
                    let _ = to.shutdown().await;
                    if self.eof[0] && self.eof[1] {
                        return;
                    }
                    continue;
                }
                Ok(n) => n,
            };
            let chunk = if dir == Direction::ToServer {
                &up[..n]
            } else {
                &down[..n]
            };
            let chunk = chunk.to_vec();
            let (to, from) = if dir == Direction::ToServer {
                (&mut server, &mut client)
            } else {
                (&mut client, &mut server)
            };
            if !self.pass(dir, &chunk, to, from).await {
                return;
            }
        }
    }

    /// Forward (or break) one chunk; `false` when the connection is finished.
    async fn pass(
        &mut self,
        dir: Direction,
        chunk: &[u8],
        to: &mut TcpStream,
        from: &mut TcpStream,
    ) -> bool {
        let s = slot(dir);
        if self.holed[s] {
            return true;
        }
        if dir == Direction::ToServer {
            self.note_requests(chunk);
        }
        let step = self.decide(dir, chunk.len());
        let (n, fault) = match step {
            Step::Forward(n) => (n, None),
            Step::Then(n, f) => (n, Some(f)),
        };
        if !self.forward(dir, &chunk[..n], to).await {
            return false;
        }
        let Some(fault) = fault else { return true };
        let rest = &chunk[n..];
        match fault {
            Fault::Stall => self.stalled[s] = true,
            Fault::BlackHole => self.holed[s] = true,
            Fault::Truncate => {
                let _ = to.shutdown().await;
                let _ = from.shutdown().await;
                return false;
            }
            Fault::Reset => {
                reset(to);
                reset(from);
                return false;
            }
            Fault::SlowDrip { bytes, every } => {
                self.drip[s] = Some((bytes.max(1), every));
                return self.forward(dir, rest, to).await;
            }
        }
        true
    }

    /// Write `bytes` on, at the drip rate if one is set; count them.
    async fn forward(&mut self, dir: Direction, bytes: &[u8], to: &mut TcpStream) -> bool {
        let s = slot(dir);
        let pieces: Vec<&[u8]> = match self.drip[s] {
            Some((size, _)) => bytes.chunks(size).collect(),
            None => vec![bytes],
        };
        for piece in pieces {
            if piece.is_empty() {
                continue;
            }
            if let Some((_, every)) = self.drip[s] {
                tokio::time::sleep(every).await;
            }
            if to.write_all(piece).await.is_err() {
                return false;
            }
            let len = piece.len() as u64;
            self.total[s] += len;
            self.exchange[s] += len;
            if dir == Direction::ToClient
                && let Some(i) = self.current
                && let Some(r) = lock(&self.shared).requests.get_mut(i)
            {
                r.reply_bytes += len;
            }
        }
        true
    }

    /// The first rule that fires within the next `len` bytes of `dir`.
    fn decide(&mut self, dir: Direction, len: usize) -> Step {
        let s = slot(dir);
        if self.faulted[s] {
            return Step::Forward(len);
        }
        let mut shared = lock(&self.shared);
        let line = self
            .current
            .and_then(|i| shared.requests.get(i))
            .map(|r| r.line.clone())
            .unwrap_or_default();
        let hit = shared.rules.iter().position(|r| {
            let applies = r.direction == dir
                && r.times != Some(0)
                && r.matching.as_deref().is_none_or(|m| line.contains(m));
            let at = if r.matching.is_some() {
                self.exchange[s]
            } else {
                self.total[s]
            };
            applies && at + len as u64 > r.after
        });
        let Some(i) = hit else {
            return Step::Forward(len);
        };
        let rule = &mut shared.rules[i];
        let at = if rule.matching.is_some() {
            self.exchange[s]
        } else {
            self.total[s]
        };
        let fault = rule.fault;
        if let Some(t) = rule.times.as_mut() {
            *t -= 1;
        }
        let n = rule.after.saturating_sub(at).min(len as u64) as usize;
        shared.fired.push(fault);
        self.faulted[s] = true;
        Step::Then(n, fault)
    }

    /// Find request heads in the agent's bytes (a JSON body has no CRLF, so a head's
    /// request line may follow a body on the same "line").
    fn note_requests(&mut self, chunk: &[u8]) {
        self.pending.extend_from_slice(chunk);
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        let Some(end) = text.rfind("\r\n\r\n") else {
            if self.pending.len() > 64 * 1024 {
                self.pending.clear();
            }
            return;
        };
        let mut found = Vec::new();
        let mut lines = text[..end].split("\r\n");
        while let Some(line) = lines.next() {
            let start = ["GET /", "POST /", "PUT /", "DELETE /", "HEAD /"]
                .iter()
                .filter_map(|m| line.find(m))
                .min();
            let Some(start) = start else { continue };
            let mut req = Request {
                connection: self.id,
                line: line[start..].trim_end_matches(" HTTP/1.1").to_owned(),
                range: None,
                reply_bytes: 0,
            };
            for header in lines.by_ref() {
                if header.is_empty() {
                    break;
                }
                if let Some((name, value)) = header.split_once(':')
                    && name.eq_ignore_ascii_case("range")
                {
                    req.range = Some(value.trim().to_owned());
                }
            }
            found.push(req);
        }
        self.pending.drain(..(end + 4).min(self.pending.len()));
        if found.is_empty() {
            return;
        }
        let mut shared = lock(&self.shared);
        for req in found {
            shared.requests.push(req);
            self.current = Some(shared.requests.len() - 1);
        }
        self.exchange = [0; 2];
        // A new exchange: a drip set for the previous reply does not carry over.
        self.drip = [None; 2];
        self.faulted = [false; 2];
    }
}

/// Make the coming close a TCP RST rather than a FIN.
fn reset(stream: &TcpStream) {
    #[allow(deprecated)] // blocking-close concern does not apply to a zero linger
    let _ = stream.set_linger(Some(Duration::ZERO));
}

/// Start a proxy or fail the test with the reason.
pub async fn proxy_to(upstream: &str) -> FaultProxy {
    FaultProxy::start(upstream)
        .await
        .with_context(|| format!("starting a fault proxy to {upstream}"))
        .unwrap_or_else(|e| panic!("{e:#}"))
}
