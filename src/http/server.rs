//! The HTTP/1 server loop: `axum::serve` without its blind spots.
//!
//! `axum::serve` runs hyper without a timer, so a client that sends half a request head and then
//! nothing holds its connection (and a file descriptor) forever; a few hundred of those took the
//! whole service down, health checks included. This loop serves the same router with:
//!
//! - a **header-read timeout** (`HTTP_HEADER_READ_TIMEOUT_SECONDS`): the request head must arrive
//!   within it, counted from when the connection opened or its previous response was sent (so it
//!   also bounds how long an idle keep-alive connection is kept);
//! - an **idle timeout** (`HTTP_IDLE_TIMEOUT_SECONDS`) for requests in progress: a request body
//!   that sends nothing for that long fails (408), and a response the client stops reading for
//!   that long is abandoned ([`WriteDeadlineIo`]);
//! - a **cap on open connections** (`HTTP_MAX_CONNECTIONS`, lowered to what the process's file
//!   descriptor limit allows): when it is reached, the oldest connection that has no request in
//!   progress is closed to make room, so stalled clients can never lock out a health check or a
//!   device. When every connection is busy, the address holding the most of them (an IPv6 one
//!   counted by its /64) gives up its oldest, as long as it holds at least two more than the
//!   newcomer's address: a client that keeps all of them busy (reading each response a few bytes
//!   at a time, trickling bodies) cannot lock other addresses out. When no address does, the
//!   same is asked of networks (IPv4 /24, IPv6 /48, as the admin throttle counts them): one
//!   client with a /48 has 65,536 /64s and could otherwise hold every connection one or two per
//!   /64. A trusted proxy's connections (`TRUSTED_PROXIES`, matched by the connection's own
//!   address) are never taken and count against nobody: they are many clients' requests. Only
//!   when no address or network holds more than its share is the new connection turned away;
//! - a **shutdown grace period** (`SHUTDOWN_GRACE_SECONDS`): on shutdown idle connections close at
//!   once, requests in progress get the grace period, then whatever is left is dropped.
//!
//! HTTP/2 is not offered (nothing here needs it; `axum::serve` did not offer it either without its
//! `http2` feature).

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use super::body::{DeadlineBody, HeldBody};
use super::client_addr::{self, PeerAddr};
use crate::config::HttpLimits;
use crate::telemetry;

/// `limits.max_connections` lowered so that open connections can never use up the file
/// descriptors the process needs for its database pool, the object store and temporary files.
/// `crate::startup` applies it to the configuration once, before anything is sized by it (the
/// live streams' half, and [`serve`]'s registry).
pub fn fitted_to_fd_limit(mut limits: HttpLimits) -> HttpLimits {
    if let Some(fds) = open_file_limit() {
        let usable = fds.saturating_sub(RESERVED_FDS).max(MIN_CONNECTIONS) as usize;
        if usable < limits.max_connections {
            tracing::warn!(
                configured = limits.max_connections,
                usable,
                open_file_limit = fds,
                "http_max_connections_lowered_to_fd_limit"
            );
            limits.max_connections = usable;
        }
    }
    limits
}

/// The process's soft limit on open files, after raising it to the hard limit (as Go's runtime
/// does): the default soft limit of 1024 is a poor fit for a server.
#[cfg(unix)]
pub fn open_file_limit() -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            limit = raised;
        }
    }
    limit.current
}

#[cfg(not(unix))]
pub fn open_file_limit() -> Option<u64> {
    None
}

/// File descriptors kept for everything that is not an HTTP connection.
const RESERVED_FDS: u64 = 128;
const MIN_CONNECTIONS: u64 = 16;

/// Serves `router` on `listener` until `shutdown` fires, then drains as described above.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    trusted_proxies: Vec<ipnet::IpNet>,
    shutdown: CancellationToken,
) {
    let registry = Registry::new(limits.max_connections).sparing(trusted_proxies);
    let tracker = TaskTracker::new();
    // Fires when the grace period after `shutdown` is over: every connection left is dropped.
    let hard_stop = CancellationToken::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_BUF_SIZE);

    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => (stream, peer),
                Err(e) => {
                    // EMFILE/ENFILE and friends: back off instead of spinning; connections
                    // closing (or being evicted) free descriptors again.
                    tracing::warn!(error = %e, "http_accept_failed");
                    metrics::counter!(telemetry::HTTP_ACCEPT_ERRORS).increment(1);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Some(conn) = registry.admit(peer.ip()) else {
            metrics::counter!(telemetry::HTTP_CONNECTIONS_REFUSED).increment(1);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(
            WriteDeadlineIo::new(stream, limits.idle_timeout).reporting_to(conn.writing.clone()),
        );
        let active = conn.active.clone();
        let router = router.clone();
        let idle = limits.idle_timeout;
        let body_timeout = limits.body_timeout;
        let service = tower::service_fn(move |req: http::Request<Incoming>| {
            let guard = ActiveGuard::enter(active.clone());
            let (mut parts, body) = req.into_parts();
            parts.extensions.insert(PeerAddr(peer));
            // A request without a body (most: every GET of a device) needs no deadline, and
            // gets no timer.
            let empty = http_body::Body::is_end_stream(&body);
            let idle_bounded = Body::new(tower_http::timeout::TimeoutBody::new(idle, body));
            let req = if empty {
                http::Request::from_parts(parts, idle_bounded)
            } else {
                let (bounded, deadline) = DeadlineBody::new(idle_bounded, body_timeout);
                parts.extensions.insert(deadline);
                http::Request::from_parts(parts, Body::new(bounded))
            };
            let response = router.clone().oneshot(req);
            async move {
                // The request stays "in progress" until its response body is done or dropped.
                response.await.map(|r| HeldBody::wrap(r, guard))
            }
        });
        let serving = http.serve_connection(io, TowerToHyperService::new(service));
        let shutdown = shutdown.clone();
        let hard_stop = hard_stop.clone();
        let registry = registry.clone();
        tracker.spawn(async move {
            let mut serving = std::pin::pin!(serving);
            tokio::select! {
                result = serving.as_mut() => log_connection_end(result),
                () = conn.evict.cancelled() => {
                    metrics::counter!(telemetry::HTTP_CONNECTIONS_EVICTED).increment(1);
                }
                () = shutdown.cancelled() => {
                    serving.as_mut().graceful_shutdown();
                    tokio::select! {
                        result = serving.as_mut() => log_connection_end(result),
                        () = hard_stop.cancelled() => {}
                    }
                }
            }
            registry.release(conn.id);
        });
    }

    drop(listener);
    tracker.close();
    if tokio::time::timeout(limits.shutdown_grace, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            remaining = registry.len(),
            "http_connections_dropped_after_grace_period"
        );
        hard_stop.cancel();
        tracker.wait().await;
    }
}

/// hyper's read buffer per connection (its default is ~400 KB); request heads are small and bodies
/// are streamed, so a smaller cap bounds memory per stalled connection.
const MAX_BUF_SIZE: usize = 64 * 1024;

fn log_connection_end(result: Result<(), hyper::Error>) {
    if let Err(e) = result {
        if e.is_timeout() {
            metrics::counter!(telemetry::HTTP_CONNECTION_TIMEOUTS).increment(1);
        }
        tracing::debug!(error = %e, "http_connection_ended");
    }
}

/// The open connections, oldest first, and which of them have a request in progress.
#[derive(Clone)]
struct Registry {
    inner: Arc<Mutex<RegistryInner>>,
    max: usize,
    /// Addresses whose busy connections are never closed to make room: the trusted proxies,
    /// whose connections are many clients' requests.
    spared: Arc<Vec<ipnet::IpNet>>,
}

struct RegistryInner {
    next_id: u64,
    open: BTreeMap<u64, Arc<ConnState>>,
    /// Open connections per address group (see [`peer_group`]), a trusted proxy's not counted.
    per_group: std::collections::HashMap<std::net::IpAddr, usize>,
    /// The same per network (see [`peer_network`]).
    per_network: std::collections::HashMap<std::net::IpAddr, usize>,
}

/// The address a connection counts against: its peer's, an IPv6 one cut to its /64 (what one
/// client has to itself), an IPv4-mapped one as the IPv4 address.
fn peer_group(ip: std::net::IpAddr) -> std::net::IpAddr {
    cut(ip, 32, 64)
}

/// The network a connection counts against when no address holds more than its share: IPv4 by
/// its /24, IPv6 by its /48 (a site's allocation), as `client_addr::throttle_group` counts.
fn peer_network(ip: std::net::IpAddr) -> std::net::IpAddr {
    cut(ip, 24, 48)
}

/// `ip` (an IPv4-mapped one as IPv4) cut to its first `v4` or `v6` bits.
fn cut(ip: std::net::IpAddr, v4: u8, v6: u8) -> std::net::IpAddr {
    let ip = client_addr::canonical(ip);
    let bits = if ip.is_ipv4() { v4 } else { v6 };
    ipnet::IpNet::new(ip, bits).map_or(ip, |net| net.trunc().addr())
}

struct ConnState {
    id: u64,
    group: std::net::IpAddr,
    network: std::net::IpAddr,
    /// A trusted proxy's: never taken, counted against nobody.
    spared: bool,
    /// Requests in progress (from the head being read to the response body being done).
    active: Arc<AtomicUsize>,
    /// Whether the connection's last write could not proceed (the client has not read what was
    /// sent yet): hyper may still hold a response whose body it has already dropped (an image
    /// from memory is one frame), so the connection is not idle until its writes go through.
    writing: Arc<std::sync::atomic::AtomicBool>,
    evict: CancellationToken,
}

impl ConnState {
    fn idle(&self) -> bool {
        self.active.load(Ordering::Acquire) == 0 && !self.writing.load(Ordering::Acquire)
    }
}

impl Registry {
    fn new(max: usize) -> Self {
        Registry {
            inner: Arc::new(Mutex::new(RegistryInner {
                next_id: 0,
                open: BTreeMap::new(),
                per_group: std::collections::HashMap::new(),
                per_network: std::collections::HashMap::new(),
            })),
            max: max.max(1),
            spared: Arc::default(),
        }
    }

    fn sparing(mut self, spared: Vec<ipnet::IpNet>) -> Self {
        self.spared = Arc::new(spared);
        self
    }

    /// Registers a new connection from `peer`. At the cap, it first closes the oldest idle
    /// connection, or else the oldest of the address group holding the most connections if that
    /// group holds at least two more than the newcomer's, or else the same by network (see the
    /// module docs). `None`: every connection is busy and nobody holds more than their share, so
    /// the new one is turned away.
    fn admit(&self, peer: std::net::IpAddr) -> Option<Arc<ConnState>> {
        let (group, network) = (peer_group(peer), peer_network(peer));
        let spared = client_addr::is_trusted(client_addr::canonical(peer), &self.spared);
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.open.len() >= self.max {
            let victim = match inner.open.values().find(|c| c.idle()) {
                Some(idle) => idle.id,
                None => inner
                    .oldest_of_the_largest_above(&inner.per_group, group, |c| c.group)
                    .or_else(|| {
                        inner
                            .oldest_of_the_largest_above(&inner.per_network, network, |c| c.network)
                    })?,
            };
            inner.remove(victim);
        }
        let id = inner.next_id;
        inner.next_id += 1;
        let conn = Arc::new(ConnState {
            id,
            group,
            network,
            spared,
            active: Arc::new(AtomicUsize::new(0)),
            writing: Arc::default(),
            evict: CancellationToken::new(),
        });
        inner.open.insert(id, conn.clone());
        if !spared {
            *inner.per_group.entry(group).or_default() += 1;
            *inner.per_network.entry(network).or_default() += 1;
        }
        metrics::gauge!(telemetry::HTTP_CONNECTIONS_OPEN).set(inner.open.len() as f64);
        Some(conn)
    }

    fn release(&self, id: u64) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.remove(id);
        metrics::gauge!(telemetry::HTTP_CONNECTIONS_OPEN).set(inner.open.len() as f64);
    }

    fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .open
            .len()
    }
}

impl RegistryInner {
    /// Forgets connection `id` (if still open) and tells its task to close it.
    fn remove(&mut self, id: u64) {
        let Some(conn) = self.open.remove(&id) else {
            return;
        };
        conn.evict.cancel();
        if conn.spared {
            return;
        }
        for (counts, key) in [
            (&mut self.per_group, conn.group),
            (&mut self.per_network, conn.network),
        ] {
            if let Some(count) = counts.get_mut(&key) {
                *count -= 1;
                if *count == 0 {
                    counts.remove(&key);
                }
            }
        }
    }

    /// The oldest connection (not a trusted proxy's) of the group in `counts` holding the most,
    /// if it holds at least two more than `newcomer`'s (taking one away then still leaves it
    /// more than the newcomer's); `key` says which group a connection is in.
    fn oldest_of_the_largest_above(
        &self,
        counts: &std::collections::HashMap<std::net::IpAddr, usize>,
        newcomer: std::net::IpAddr,
        key: impl Fn(&ConnState) -> std::net::IpAddr,
    ) -> Option<u64> {
        let (&largest, &count) = counts.iter().max_by_key(|(_, count)| **count)?;
        let newcomers = counts.get(&newcomer).copied().unwrap_or(0);
        if count < newcomers + 2 {
            return None;
        }
        self.open
            .values()
            .find(|c| !c.spared && key(c) == largest)
            .map(|c| c.id)
    }
}

/// Counts a request as in progress for as long as it lives.
struct ActiveGuard(Arc<AtomicUsize>);

impl ActiveGuard {
    fn enter(active: Arc<AtomicUsize>) -> Self {
        active.fetch_add(1, Ordering::AcqRel);
        ActiveGuard(active)
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A TCP stream whose writes fail once they have made no progress for `timeout`: a client that
/// stops reading a response (or vanished without a FIN) cannot hold its connection for the
/// kernel's retransmission timeout of a quarter of an hour.
pub struct WriteDeadlineIo {
    stream: TcpStream,
    timeout: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Set while a write waits for the client to read (see `ConnState::writing`).
    writing: Option<Arc<std::sync::atomic::AtomicBool>>,
}

impl WriteDeadlineIo {
    pub fn new(stream: TcpStream, timeout: Duration) -> Self {
        WriteDeadlineIo {
            stream,
            timeout,
            stalled: None,
            writing: None,
        }
    }

    /// Reports into `writing` whether a write is waiting for the client.
    fn reporting_to(mut self, writing: Arc<std::sync::atomic::AtomicBool>) -> Self {
        self.writing = Some(writing);
        self
    }

    fn set_writing(&self, waiting: bool) {
        if let Some(writing) = &self.writing {
            writing.store(waiting, Ordering::Release);
        }
    }

    /// Called when a write could not proceed: arms the deadline (once) and reports whether it passed.
    fn deadline_passed(&mut self, cx: &mut Context<'_>) -> bool {
        let timeout = self.timeout;
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        sleep.as_mut().poll(cx).is_ready()
    }

    fn on_write<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        self.set_writing(polled.is_pending());
        match polled {
            Poll::Pending => {
                if self.deadline_passed(cx) {
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client read nothing within the idle timeout",
                    )))
                } else {
                    Poll::Pending
                }
            }
            ready => {
                self.stalled = None;
                ready
            }
        }
    }
}

impl AsyncRead for WriteDeadlineIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for WriteDeadlineIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.on_write(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.on_write(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.stream).poll_flush(cx);
        self.on_write(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    /// A connection admitted from `group` with a request in progress for as long as the guard
    /// lives.
    fn busy(registry: &Registry, group: std::net::IpAddr) -> (Arc<ConnState>, ActiveGuard) {
        let conn = registry.admit(group).expect("admitted");
        let guard = ActiveGuard::enter(conn.active.clone());
        (conn, guard)
    }

    #[test]
    fn one_address_keeping_every_connection_busy_gives_way_to_another() {
        let registry = Registry::new(4);
        let hog: Vec<_> = (0..4).map(|_| busy(&registry, A)).collect();
        // Full, all busy: the address with the most gives up its oldest.
        let (b1, _b1) = busy(&registry, B);
        assert!(hog[0].0.evict.is_cancelled(), "the hog's oldest stayed");
        assert!(!hog[1].0.evict.is_cancelled());
        // The hog itself gets no more than it has (3 against 1).
        assert!(registry.admit(A).is_none());
        // The other address does, until the two hold the same.
        let (_b2, _b2_guard) = busy(&registry, B);
        assert!(hog[1].0.evict.is_cancelled());
        assert!(registry.admit(B).is_none(), "2 against 2 is a fair share");
        assert!(registry.admit(A).is_none());
        assert!(!b1.evict.is_cancelled());
        assert_eq!(registry.len(), 4);
    }

    #[test]
    fn a_trusted_proxys_busy_connections_are_spared() {
        let registry = Registry::new(3).sparing(vec!["192.0.2.1/32".parse().unwrap()]);
        let proxied: Vec<_> = (0..3).map(|_| busy(&registry, A)).collect();
        assert!(registry.admit(B).is_none(), "a proxied request was cut off");
        assert!(proxied.iter().all(|(c, _)| !c.evict.is_cancelled()));
    }

    #[test]
    fn an_ipv6_proxy_is_spared_by_its_own_address() {
        for (proxy, listed) in [
            ("2001:db8:0:1::10", "2001:db8:0:1::10/128"),
            ("::1", "::1/128"),
        ] {
            let proxy: std::net::IpAddr = proxy.parse().unwrap();
            let registry = Registry::new(3).sparing(vec![listed.parse().unwrap()]);
            let proxied: Vec<_> = (0..3).map(|_| busy(&registry, proxy)).collect();
            assert!(
                registry.admit(B).is_none(),
                "{listed}: a proxied request was cut off"
            );
            assert!(
                proxied.iter().all(|(c, _)| !c.evict.is_cancelled()),
                "{listed}"
            );
        }
        // A narrow entry that holds the /64's first address spares no other host of that /64.
        let registry = Registry::new(2).sparing(vec!["2001:db8::/120".parse().unwrap()]);
        let other: std::net::IpAddr = "2001:db8::1:0:0:5".parse().unwrap();
        let hog: Vec<_> = (0..2).map(|_| busy(&registry, other)).collect();
        assert!(registry.admit(B).is_some());
        assert!(
            hog[0].0.evict.is_cancelled(),
            "a host outside the entry was spared"
        );
    }

    #[test]
    fn one_network_spread_over_many_64s_gives_way_to_another() {
        // One or two busy connections in each of four /64s of one /48: no address holds two
        // more than the newcomer's, its network does.
        let registry = Registry::new(4);
        let spread: Vec<_> = (1..=4)
            .map(|n| busy(&registry, format!("2001:db8:7:{n}::1").parse().unwrap()))
            .collect();
        let (_b, _b_guard) = busy(&registry, B);
        assert!(
            spread[0].0.evict.is_cancelled(),
            "the network's oldest stayed"
        );
        assert!(spread[1..].iter().all(|(c, _)| !c.evict.is_cancelled()));
        assert_eq!(registry.len(), 4);
        assert_eq!(
            peer_network("2001:db8:7:4::1".parse().unwrap()),
            "2001:db8:7::".parse::<std::net::IpAddr>().unwrap()
        );
        assert_eq!(
            peer_network(A),
            "192.0.2.0".parse::<std::net::IpAddr>().unwrap()
        );
    }

    #[test]
    fn an_ipv6_client_counts_as_its_64() {
        let one: std::net::IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let other: std::net::IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        assert_eq!(peer_group(one), peer_group(other));
        assert_ne!(
            peer_group(one),
            peer_group("2001:db8:1:3::1".parse().unwrap())
        );
        let mapped: std::net::IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(peer_group(mapped), A);
    }

    #[test]
    fn the_oldest_idle_connection_makes_room() {
        let registry = Registry::new(2);
        let first = registry.admit(A).unwrap();
        let second = registry.admit(A).unwrap();
        let _busy = ActiveGuard::enter(first.active.clone());
        let third = registry.admit(A).unwrap();
        assert!(!first.evict.is_cancelled(), "a busy connection was evicted");
        assert!(second.evict.is_cancelled(), "the idle connection stayed");
        assert_eq!(registry.len(), 2);
        registry.release(second.id); // its task ends later: releasing twice is harmless
        assert_eq!(registry.len(), 2);
        drop(third);
    }

    #[test]
    fn a_connection_still_sending_a_finished_response_is_not_idle() {
        let registry = Registry::new(1);
        let sending = registry.admit(A).unwrap();
        // The response body is done (handed to hyper whole), but the client has not read it.
        sending.writing.store(true, Ordering::Release);
        assert!(
            registry.admit(A).is_none(),
            "a connection mid-response was evicted"
        );
        assert!(!sending.evict.is_cancelled());
        sending.writing.store(false, Ordering::Release);
        assert!(registry.admit(A).is_some());
        assert!(sending.evict.is_cancelled());
    }

    #[test]
    fn a_new_connection_is_turned_away_only_when_all_are_busy() {
        let registry = Registry::new(1);
        let only = registry.admit(A).unwrap();
        let _busy = ActiveGuard::enter(only.active.clone());
        assert!(registry.admit(A).is_none());
        drop(_busy);
        assert!(registry.admit(A).is_some());
        assert!(only.evict.is_cancelled());
    }
}
