//! What a sandbox's namespace sends to the host instead of the world: its DNS (every query to
//! the gateway) and, when its policy names domains, its HTTP and TLS connections (ports 80 and
//! 443). coved serves them on ports of [`PORT_RANGE`]; a request is answered under the policy
//! of the sandbox whose link address it comes from.
//!
//! - The resolver answers A queries only: names a `deny` rule names are NXDOMAIN without asking
//!   anyone (the question itself could carry data out); names an `allow` rule names are asked
//!   upstream; others are asked only when the policy does not deny every address. Answers hold
//!   only addresses the guest may reach (no walls, no private address a CIDR rule does not
//!   allow: no DNS rebinding). Other types get an empty answer.
//! - The proxies read the Host header (HTTP) or the SNI (TLS), judge the name, resolve it
//!   themselves and dial an address the policy allows; anything else is closed (HTTP gets a
//!   403 first).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use cove_model::NetworkPolicy;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, Record, RecordType, rdata::A};
use std::collections::HashMap;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;

use crate::judge::Judge;

/// Ports the host lets sandboxes reach (its own table allows them from sandbox links): each
/// coved takes three in a row here.
pub const PORT_RANGE: std::ops::RangeInclusive<u16> = 47000..=47999;

/// The ports one coved serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    /// DNS, UDP and TCP.
    pub dns: u16,
    /// The HTTP proxy.
    pub http: u16,
    /// The TLS proxy.
    pub tls: u16,
}

/// The policy of the sandbox whose link address is this, if it is one of this host's.
pub type Lookup = Arc<dyn Fn(Ipv4Addr) -> Option<NetworkPolicy> + Send + Sync>;

/// How long an upstream answer, a dial or a client's first bytes may take.
const STEP: Duration = Duration::from_secs(10);

/// The upstream resolver: `COVE_DNS_UPSTREAM` (`IP[:PORT]`), else the first `nameserver` of
/// the host's `/etc/resolv.conf`.
pub fn upstream_from_env() -> Option<SocketAddr> {
    if let Ok(v) = std::env::var("COVE_DNS_UPSTREAM")
        && !v.is_empty()
    {
        return v.parse::<SocketAddr>().ok().or_else(|| {
            v.parse::<Ipv4Addr>()
                .ok()
                .map(|ip| SocketAddr::from((ip, 53)))
        });
    }
    std::fs::read_to_string("/etc/resolv.conf")
        .ok()?
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .find_map(|a| a.trim().parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
}

/// Requests one sandbox may have in flight at once (DNS questions and proxied connections
/// together): a guest flooding its resolver or proxies fills its own share, not coved's file
/// table.
const PER_SANDBOX: usize = 64;
/// DNS questions in flight for all sandboxes together.
const DNS_IN_FLIGHT: usize = 1024;
/// Proxied and DNS-over-TCP connections for all sandboxes together.
const TCP_OPEN: usize = 4096;

/// What the services hold per sandbox: its share of requests, and its proxied connections (cut
/// when its policy changes: the new policy judges them again from scratch).
#[derive(Debug, Default)]
pub struct Registry {
    shares: std::sync::Mutex<HashMap<Ipv4Addr, Arc<Semaphore>>>,
    conns: std::sync::Mutex<HashMap<Ipv4Addr, Vec<tokio::task::AbortHandle>>>,
}

impl Registry {
    fn share(&self, ip: Ipv4Addr) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let s = self
            .shares
            .lock()
            .expect("lock")
            .entry(ip)
            .or_insert_with(|| Arc::new(Semaphore::new(PER_SANDBOX)))
            .clone();
        s.try_acquire_owned().ok()
    }

    fn hold(&self, ip: Ipv4Addr, h: tokio::task::AbortHandle) {
        let mut conns = self.conns.lock().expect("lock");
        let list = conns.entry(ip).or_default();
        list.retain(|h| !h.is_finished());
        list.push(h);
    }

    /// Ends every proxied connection of the sandbox whose link address is `ip`.
    pub fn cut(&self, ip: Ipv4Addr) {
        if let Some(list) = self.conns.lock().expect("lock").remove(&ip) {
            for h in list {
                h.abort();
            }
        }
    }

    /// Forgets the sandbox whose link address is `ip` (its network is gone).
    pub fn forget(&self, ip: Ipv4Addr) {
        self.cut(ip);
        self.shares.lock().expect("lock").remove(&ip);
    }
}

#[derive(Clone)]
struct Ctx {
    lookup: Lookup,
    judge: Judge,
    upstream: Option<SocketAddr>,
    reg: Arc<Registry>,
    dns: Arc<Semaphore>,
    tcp: Arc<Semaphore>,
}

/// Where a serving process's lock of its ports is: held while it serves, so another coved
/// tells a live one's sandboxes from those of one that ended.
pub(crate) fn lock_path(dns_port: u16) -> std::path::PathBuf {
    std::path::Path::new(crate::lease::DIR).join(format!("services-{dns_port}.lock"))
}

/// Binds the three services on the first free ports of [`PORT_RANGE`] and serves them until
/// the runtime ends.
pub async fn start(
    lookup: Lookup,
    judge: Judge,
    upstream: Option<SocketAddr>,
    reg: Arc<Registry>,
) -> std::io::Result<Ports> {
    let ctx = Ctx {
        lookup,
        judge,
        upstream,
        reg,
        dns: Arc::new(Semaphore::new(DNS_IN_FLIGHT)),
        tcp: Arc::new(Semaphore::new(TCP_OPEN)),
    };
    std::fs::create_dir_all(crate::lease::DIR)?;
    let mut p = *PORT_RANGE.start();
    while p + 2 <= *PORT_RANGE.end() {
        let bound = async {
            Ok::<_, std::io::Error>((
                UdpSocket::bind(("0.0.0.0", p)).await?,
                TcpListener::bind(("0.0.0.0", p)).await?,
                TcpListener::bind(("0.0.0.0", p + 1)).await?,
                TcpListener::bind(("0.0.0.0", p + 2)).await?,
            ))
        }
        .await;
        if let Ok((udp, dns_tcp, http, tls)) = bound {
            // Held for the life of the process (the lock goes with it).
            let lock = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(lock_path(p))?;
            match nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock) {
                Ok(held) => std::mem::forget(held),
                Err(_) => {
                    p += 3;
                    continue;
                }
            }
            tokio::spawn(serve_udp(Arc::new(udp), ctx.clone()));
            tokio::spawn(serve_tcp(dns_tcp, ctx.clone(), Kind::Dns));
            tokio::spawn(serve_tcp(http, ctx.clone(), Kind::Http));
            tokio::spawn(serve_tcp(tls, ctx, Kind::Tls));
            return Ok(Ports {
                dns: p,
                http: p + 1,
                tls: p + 2,
            });
        }
        p += 3;
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        "no three free ports in 47000-47999 for the sandboxes' resolver and proxies",
    ))
}

fn source_v4(a: SocketAddr) -> Option<Ipv4Addr> {
    match a {
        SocketAddr::V4(v) => Some(*v.ip()),
        SocketAddr::V6(v) => v.ip().to_ipv4_mapped(),
    }
}

/// What a request from `from` may use, if anything: the policy of the sandbox whose link
/// address it is, its share, and a place in `total`. Only a sandbox's address gets a share
/// (anyone else, spoofing or not, gets nothing and grows nothing); a sandbox over its share, or
/// all of them over the total, are turned away.
fn admit(
    ctx: &Ctx,
    from: SocketAddr,
    total: &Arc<Semaphore>,
) -> Option<(
    Ipv4Addr,
    NetworkPolicy,
    (
        tokio::sync::OwnedSemaphorePermit,
        tokio::sync::OwnedSemaphorePermit,
    ),
)> {
    let ip = source_v4(from)?;
    let policy = (ctx.lookup)(ip)?;
    let share = ctx.reg.share(ip)?;
    let total = total.clone().try_acquire_owned().ok()?;
    Some((ip, policy, (share, total)))
}

async fn serve_udp(sock: Arc<UdpSocket>, ctx: Ctx) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, from)) = sock.recv_from(&mut buf).await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        // A question turned away is lost (DNS asks again).
        let Some((_, policy, permits)) = admit(&ctx, from, &ctx.dns) else {
            continue;
        };
        let query = buf[..n].to_vec();
        let (sock, ctx) = (sock.clone(), ctx.clone());
        tokio::spawn(async move {
            if let Some(reply) = answer(&ctx, &policy, &query).await {
                let _ = sock.send_to(&reply, from).await;
            }
            drop(permits);
        });
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Dns,
    Http,
    Tls,
}

async fn serve_tcp(l: TcpListener, ctx: Ctx, kind: Kind) {
    loop {
        let Ok((c, from)) = l.accept().await else {
            // Out of file descriptors, say: let some go before trying again.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Some((ip, policy, permits)) = admit(&ctx, from, &ctx.tcp) else {
            continue;
        };
        let task_ctx = ctx.clone();
        let task = tokio::spawn(async move {
            let ctx = task_ctx;
            let _ = c.set_nodelay(true);
            let _ = match kind {
                Kind::Dns => dns_over_tcp(c, &ctx, &policy).await,
                Kind::Http => proxy(c, &ctx, &policy, 80).await,
                Kind::Tls => proxy(c, &ctx, &policy, 443).await,
            };
            drop(permits);
        });
        ctx.reg.hold(ip, task.abort_handle());
    }
}

async fn dns_over_tcp(mut c: TcpStream, ctx: &Ctx, policy: &NetworkPolicy) -> std::io::Result<()> {
    loop {
        let mut len = [0u8; 2];
        if tokio::time::timeout(STEP, c.read_exact(&mut len))
            .await
            .is_err()
        {
            return Ok(());
        }
        let mut q = vec![0u8; usize::from(u16::from_be_bytes(len))];
        tokio::time::timeout(STEP, c.read_exact(&mut q))
            .await
            .map_err(|_| std::io::ErrorKind::TimedOut)??;
        let Some(r) = answer(ctx, policy, &q).await else {
            return Ok(());
        };
        let n = u16::try_from(r.len()).unwrap_or(u16::MAX);
        c.write_all(&n.to_be_bytes()).await?;
        c.write_all(&r).await?;
    }
}

fn reply(q: &Message, code: ResponseCode, answers: Vec<Record>) -> Option<Vec<u8>> {
    let mut m = Message::new(q.metadata.id, MessageType::Response, OpCode::Query);
    m.metadata.recursion_desired = q.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    m.metadata.response_code = code;
    m.queries = q.queries.clone();
    m.answers = answers;
    m.to_vec().ok()
}

/// The answer to one query under `policy`.
async fn answer(ctx: &Ctx, policy: &NetworkPolicy, query: &[u8]) -> Option<Vec<u8>> {
    let q = Message::from_vec(query).ok()?;
    if q.metadata.message_type != MessageType::Query || q.queries.len() != 1 {
        return reply(&q, ResponseCode::FormErr, Vec::new());
    }
    let question = &q.queries[0];
    let name = question.name().to_ascii();
    let host = name.trim_end_matches('.');
    let verdict = policy.name_verdict(host);
    if verdict == Some(false) || (verdict.is_none() && !ctx.judge.may_ask(policy)) {
        return reply(&q, ResponseCode::NXDomain, Vec::new());
    }
    if question.query_type() != RecordType::A {
        // IPv6 is not routed, and other types are nothing a guest's connection needs.
        return reply(&q, ResponseCode::NoError, Vec::new());
    }
    let Some((addrs, ttl)) = resolve(ctx, host).await else {
        return reply(&q, ResponseCode::ServFail, Vec::new());
    };
    let allowed: Vec<Record> = addrs
        .into_iter()
        .filter(|ip| ctx.judge.allows(policy, *ip, verdict == Some(true)))
        .map(|ip| Record::from_rdata(question.name().clone(), ttl, RData::A(A(ip))))
        .collect();
    if allowed.is_empty() {
        return reply(&q, ResponseCode::NXDomain, Vec::new());
    }
    reply(&q, ResponseCode::NoError, allowed)
}

/// A records of `host` from the upstream resolver, with the smallest TTL.
async fn resolve(ctx: &Ctx, host: &str) -> Option<(Vec<Ipv4Addr>, u32)> {
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Some((vec![ip], 0));
    }
    let upstream = ctx.upstream?;
    let name = Name::from_ascii(format!("{host}.")).ok()?;
    let mut m = Message::query();
    m.metadata.id = rand_id();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(name, RecordType::A));
    let bytes = m.to_vec().ok()?;
    let bind: SocketAddr = if upstream.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(bind).await.ok()?;
    sock.connect(upstream).await.ok()?;
    sock.send(&bytes).await.ok()?;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(STEP, sock.recv(&mut buf))
        .await
        .ok()?
        .ok()?;
    let r = Message::from_vec(&buf[..n]).ok()?;
    if r.metadata.id != m.metadata.id {
        return None;
    }
    let mut ttl = u32::MAX;
    let addrs: Vec<Ipv4Addr> = r
        .answers
        .iter()
        .filter_map(|rec| match &rec.data {
            RData::A(a) => {
                ttl = ttl.min(rec.ttl);
                Some(a.0)
            }
            _ => None,
        })
        .collect();
    Some((addrs, if ttl == u32::MAX { 0 } else { ttl }))
}

fn rand_id() -> u16 {
    let mut b = [0u8; 2];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read as _;
        let _ = f.read_exact(&mut b);
    }
    u16::from_ne_bytes(b)
}

/// Reads the client's first bytes (an HTTP request head, a TLS ClientHello), judges the name
/// they carry, and relays to an address the policy allows.
async fn proxy(
    mut c: TcpStream,
    ctx: &Ctx,
    policy: &NetworkPolicy,
    port: u16,
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(4096);
    // The whole head within one deadline: a client dribbling a byte at a time does not hold a
    // connection open.
    let read_head = async {
        loop {
            let mut buf = [0u8; 4096];
            let n = c.read(&mut buf).await?;
            if n == 0 {
                return Ok(None);
            }
            head.extend_from_slice(&buf[..n]);
            let found = if port == 443 {
                sni(&head)
            } else {
                http_host(&head)
            };
            match found {
                Found::Name(n) => return Ok(Some(n)),
                Found::More if head.len() < 16 * 1024 => {}
                Found::NoName | Found::More => return Ok(Some(String::new())),
            }
        }
    };
    let name = match tokio::time::timeout(STEP, read_head).await {
        Ok(Ok(Some(n))) if !n.is_empty() => n,
        Ok(Ok(Some(_))) => return refuse(&mut c, port, "no host name to judge").await,
        Ok(Ok(None)) | Err(_) => return Ok(()),
        Ok(Err(e)) => return Err(e),
    };
    if port == 80 {
        // One request per connection: the next one on it names its own host, and is judged on
        // a connection of its own.
        head = close_after(&head);
    }
    let verdict = policy.name_verdict(&name);
    if verdict == Some(false) {
        return refuse(
            &mut c,
            port,
            "the sandbox's network policy denies this host",
        )
        .await;
    }
    let Some((addrs, _)) = resolve(ctx, &name).await else {
        return refuse(&mut c, port, "the host name does not resolve").await;
    };
    let Some(ip) = addrs
        .into_iter()
        .find(|ip| ctx.judge.allows(policy, *ip, verdict == Some(true)))
    else {
        return refuse(
            &mut c,
            port,
            "the sandbox's network policy denies this address",
        )
        .await;
    };
    let mut up = tokio::time::timeout(STEP, TcpStream::connect((ip, port)))
        .await
        .map_err(|_| std::io::ErrorKind::TimedOut)??;
    let _ = up.set_nodelay(true);
    up.write_all(&head).await?;
    tokio::io::copy_bidirectional(&mut c, &mut up).await?;
    Ok(())
}

async fn refuse(c: &mut TcpStream, port: u16, why: &str) -> std::io::Result<()> {
    if port == 80 {
        let body = format!("cove: {why}\n");
        let _ = c
            .write_all(
                format!(
                    "HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            )
            .await;
    }
    let _ = c.shutdown().await;
    Ok(())
}

/// The request head with `Connection: close` in place of any `Connection` header, worked on
/// as bytes. A real upgrade (`Connection` naming `upgrade`) keeps its head: nothing follows it on
/// the connection but the upgraded protocol. Any other request gets one request per connection,
/// whatever else it says.
fn close_after(head: &[u8]) -> Vec<u8> {
    let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") else {
        return head.to_vec();
    };
    let lines: Vec<&[u8]> = head[..end].split(|b| *b == b'\n').collect();
    let header = |l: &[u8]| -> Option<(Vec<u8>, Vec<u8>)> {
        let l = l.strip_suffix(b"\r").unwrap_or(l);
        let i = l.iter().position(|b| *b == b':')?;
        Some((
            l[..i].trim_ascii().to_ascii_lowercase(),
            l[i + 1..].trim_ascii().to_ascii_lowercase(),
        ))
    };
    let upgrades = lines
        .iter()
        .skip(1)
        .filter_map(|l| header(l))
        .any(|(k, v)| {
            k == b"connection"
                && v.split(|b| *b == b',')
                    .any(|t| t.trim_ascii() == b"upgrade")
        });
    if upgrades {
        return head.to_vec();
    }
    let mut out: Vec<u8> = Vec::with_capacity(head.len() + 19);
    for (i, line) in lines.iter().enumerate() {
        if i > 0 && header(line).is_some_and(|(k, _)| k == b"connection") {
            continue;
        }
        out.extend_from_slice(line.strip_suffix(b"\r").unwrap_or(line));
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    out.extend_from_slice(&head[end + 4..]);
    out
}

#[derive(Debug, PartialEq, Eq)]
enum Found {
    Name(String),
    NoName,
    More,
}

fn clean(host: &str) -> Option<String> {
    let h = host.trim().trim_end_matches('.').to_ascii_lowercase();
    let h = match h.rsplit_once(':') {
        Some((name, p)) if p.bytes().all(|b| b.is_ascii_digit()) => name.to_string(),
        _ => h,
    };
    (!h.is_empty()
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-'))
    .then_some(h)
}

/// The Host header of an HTTP/1 request head.
fn http_host(head: &[u8]) -> Found {
    let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Found::More;
    };
    let text = String::from_utf8_lossy(&head[..end]);
    text.lines()
        .skip(1)
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case("host").then(|| clean(v))
        })
        .flatten()
        .map_or(Found::NoName, Found::Name)
}

/// The server name of a TLS ClientHello (RFC 8446 §4.1.2, RFC 6066 §3).
fn sni(b: &[u8]) -> Found {
    // Record header: type 22 (handshake), version, length.
    if b.len() < 5 {
        return Found::More;
    }
    if b[0] != 22 {
        return Found::NoName;
    }
    let rec_len = usize::from(u16::from_be_bytes([b[3], b[4]]));
    if b.len() < 5 + rec_len {
        return Found::More;
    }
    let h = &b[5..5 + rec_len];
    // Handshake: type 1 (ClientHello), 3-byte length, version 2, random 32.
    let parse = || -> Option<String> {
        if *h.first()? != 1 {
            return None;
        }
        let mut i = 4 + 2 + 32;
        let sid = usize::from(*h.get(i)?);
        i += 1 + sid;
        let cs = usize::from(u16::from_be_bytes([*h.get(i)?, *h.get(i + 1)?]));
        i += 2 + cs;
        let cm = usize::from(*h.get(i)?);
        i += 1 + cm;
        let ext_len = usize::from(u16::from_be_bytes([*h.get(i)?, *h.get(i + 1)?]));
        i += 2;
        let end = (i + ext_len).min(h.len());
        while i + 4 <= end {
            let ty = u16::from_be_bytes([h[i], h[i + 1]]);
            let len = usize::from(u16::from_be_bytes([h[i + 2], h[i + 3]]));
            let data = h.get(i + 4..i + 4 + len)?;
            if ty == 0 {
                // server_name_list: length, then entries of type 0 (host_name).
                let mut j = 2;
                while j + 3 <= data.len() {
                    let kind = data[j];
                    let n = usize::from(u16::from_be_bytes([data[j + 1], data[j + 2]]));
                    let name = data.get(j + 3..j + 3 + n)?;
                    if kind == 0 {
                        return clean(std::str::from_utf8(name).ok()?);
                    }
                    j += 3 + n;
                }
                return None;
            }
            i += 4 + len;
        }
        None
    };
    parse().map_or(Found::NoName, Found::Name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_headers_and_server_names_are_read() {
        assert_eq!(
            http_host(b"GET / HTTP/1.1\r\nHOST: Example.COM:8080\r\n\r\n"),
            Found::Name("example.com".into())
        );
        assert_eq!(http_host(b"GET / HTTP/1.1\r\nHost: a.b"), Found::More);
        assert_eq!(http_host(b"GET / HTTP/1.0\r\n\r\n"), Found::NoName);
        assert_eq!(
            http_host(b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n"),
            Found::NoName
        );
        // A ClientHello with SNI "pypi.org", built by hand.
        let name = b"pypi.org";
        let mut sni_ext = Vec::new();
        let list_len = 3 + name.len();
        sni_ext.extend_from_slice(&(u16::try_from(list_len).unwrap()).to_be_bytes());
        sni_ext.push(0);
        sni_ext.extend_from_slice(&(u16::try_from(name.len()).unwrap()).to_be_bytes());
        sni_ext.extend_from_slice(name);
        let mut exts = vec![0, 0];
        exts.extend_from_slice(&(u16::try_from(sni_ext.len()).unwrap()).to_be_bytes());
        exts.extend_from_slice(&sni_ext);
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]);
        body.push(0); // session id
        body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one cipher suite
        body.extend_from_slice(&[1, 0]); // compression
        body.extend_from_slice(&(u16::try_from(exts.len()).unwrap()).to_be_bytes());
        body.extend_from_slice(&exts);
        let mut hs = vec![1, 0];
        hs.extend_from_slice(&(u16::try_from(body.len()).unwrap()).to_be_bytes());
        hs.extend_from_slice(&body);
        let mut rec = vec![22, 3, 1];
        rec.extend_from_slice(&(u16::try_from(hs.len()).unwrap()).to_be_bytes());
        rec.extend_from_slice(&hs);
        assert_eq!(sni(&rec), Found::Name("pypi.org".into()));
        assert_eq!(sni(&rec[..20]), Found::More);
        assert_eq!(sni(b"GET / HTTP/1.1\r\n"), Found::NoName);
    }

    #[test]
    fn a_proxied_request_closes_its_connection_after_it() {
        let h = close_after(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\nbody");
        assert_eq!(
            String::from_utf8(h).unwrap(),
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nbody"
        );
        let up = b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\r\n";
        assert_eq!(close_after(up), up.to_vec());
        // An Upgrade header without a Connection naming it is no upgrade: closed after it.
        let smuggle = b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: x\r\nConnection: keep-alive\r\n\r\n";
        assert_eq!(
            String::from_utf8(close_after(smuggle)).unwrap(),
            "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: x\r\nConnection: close\r\n\r\n"
        );
        // Bytes that are not UTF-8 pass as they are.
        let raw = b"GET / HTTP/1.1\r\nX: \xff\r\n\r\n";
        assert_eq!(
            close_after(raw),
            b"GET / HTTP/1.1\r\nX: \xff\r\nConnection: close\r\n\r\n".to_vec()
        );
    }
}
