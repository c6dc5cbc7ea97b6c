//! Accepting and keeping TCP connections, for both ports (gRPC and the
//! HTTP probes): a bound on open connections and timeouts for the ones
//! that do nothing, so that idle or half-open peers cannot hold every file
//! descriptor of the process (and, with them, the journals' and snapshots'
//! files, `/metrics` and `/readyz`).
//!
//! A connection is closed when
//! - it has not sent a complete first request within `handshake_timeout`
//!   (a peer that connects and says nothing, or sends half a request), or
//! - it has had no call open for `idle_timeout`.
//!
//! Closing is graceful first (HTTP/2 GOAWAY; HTTP/1 closes after the
//! current response), bounded by [`CLOSE_GRACE`], after which the socket is
//! dropped: a half-open peer never acknowledges a GOAWAY. A connection
//! arriving when `max` are open first evicts the oldest connection that has
//! not sent a request yet (so silent sockets cannot starve clients that
//! talk); when every open connection has, it is closed at once and counted,
//! rather than left in the kernel's backlog where it would look accepted.
//!
//! With TLS ([`crate::api::tls`]), the handshake runs first on the
//! connection's task, under the same bounds as a connection that has sent
//! nothing yet: `handshake_timeout` from the TCP accept, evictable at the
//! limit. A failed handshake closes the connection with the `tls` reason.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::HttpService;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::api::tls::{Acceptor, Io};
use crate::metrics::{self, ConnectionClose, Port};

/// How long a connection being closed may take to say goodbye.
pub const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Bounds on the connections of one port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections open at once, at most.
    pub max: usize,
    /// A connection with no call open for this long is closed.
    pub idle_timeout: Duration,
    /// A connection without a complete first request after this long is closed.
    pub handshake_timeout: Duration,
}

/// What one connection is doing, shared by its calls and its watcher.
#[derive(Debug)]
pub struct Activity {
    born: Instant,
    open: AtomicUsize,
    seen_call: AtomicBool,
    /// Milliseconds after `born` when the last call ended.
    last_end_ms: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            born: Instant::now(),
            open: AtomicUsize::new(0),
            seen_call: AtomicBool::new(false),
            last_end_ms: AtomicU64::new(0),
        }
    }

    /// A call began; the returned guard ends it when dropped.
    pub fn begin(self: &Arc<Activity>) -> CallGuard {
        self.seen_call.store(true, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::Relaxed);
        CallGuard(self.clone())
    }

    /// Resolves when the connection should be closed, and why.
    async fn expired(&self, limits: ConnectionLimits) -> ConnectionClose {
        loop {
            let (limit, reason) = if self.seen_call.load(Ordering::Relaxed) {
                (limits.idle_timeout, ConnectionClose::Idle)
            } else {
                (limits.handshake_timeout, ConnectionClose::Handshake)
            };
            let deadline = if self.open.load(Ordering::Relaxed) > 0 {
                // Calls are bounded by their deadline; look again later.
                Instant::now() + limit
            } else {
                let idle_since = self.born + Duration::from_millis(self.last_end_ms.load(Ordering::Relaxed));
                let deadline = idle_since + limit;
                if Instant::now() >= deadline {
                    return reason;
                }
                deadline
            };
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// One open call of a connection.
#[derive(Debug)]
pub struct CallGuard(Arc<Activity>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        let a = &self.0;
        let now = a.born.elapsed().as_millis() as u64;
        a.last_end_ms.fetch_max(now, Ordering::Relaxed);
        a.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A hyper connection that can be asked to close gracefully.
pub trait Graceful: Future<Output = Result<(), hyper::Error>> {
    /// Starts a graceful close.
    fn close(self: Pin<&mut Self>);
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<I, B, S, E> Graceful for hyper::server::conn::http2::Connection<I, S, E>
where
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: hyper::body::Body + 'static,
    B::Error: Into<BoxError>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn close(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, B, S> Graceful for hyper::server::conn::http1::Connection<I, S>
where
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: hyper::body::Body + 'static,
    B::Error: Into<BoxError>,
{
    fn close(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Accepts connections on `listener` until `shutdown` completes, serving
/// each (after its TLS handshake, with `tls`) with the connection `serve`
/// makes of it; then closes every
/// connection gracefully, waiting at most `drain` (calls in flight finish
/// within their deadline) plus [`CLOSE_GRACE`].
pub async fn accept_loop<C, F>(
    listener: TcpListener,
    port: Port,
    limits: ConnectionLimits,
    drain: Duration,
    tls: Option<Acceptor>,
    shutdown: impl Future<Output = ()>,
    serve: F,
) where
    C: Graceful + Send + 'static,
    F: Fn(Io, Arc<Activity>) -> C + Send + Sync + 'static,
{
    let serve = Arc::new(serve);
    let slots = Arc::new(Semaphore::new(limits.max));
    let (stop, stopped) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut shutdown = pin!(shutdown);
    let mut refused_logged: Option<Instant> = None;
    // Open connections, oldest first, each with the signal that evicts it.
    let mut live: VecDeque<(Arc<Activity>, Arc<tokio::sync::Notify>)> = VecDeque::new();
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors and the like: say so, and
                        // do not spin while it lasts.
                        tracing::warn!(port = port.as_str(), "accepting a connection failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let mut slot = slots.clone().try_acquire_owned().ok();
                if slot.is_none() && evict_silent(&mut live) {
                    // The evicted connection frees its slot as its task ends.
                    slot = tokio::time::timeout(EVICTION_WAIT, slots.clone().acquire_owned())
                        .await
                        .ok()
                        .and_then(Result::ok);
                }
                let Some(slot) = slot else {
                    metrics::connection_closed(port, ConnectionClose::Limit);
                    if refused_logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                        refused_logged = Some(Instant::now());
                        tracing::warn!(port = port.as_str(), max = limits.max, "connection refused: the connection limit is reached");
                    }
                    drop(stream);
                    continue;
                };
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!("TCP_NODELAY: {e}");
                }
                let activity = Arc::new(Activity::new());
                live.retain(|(a, _)| Arc::strong_count(a) > 1);
                let evict = Arc::new(tokio::sync::Notify::new());
                live.push_back((activity.clone(), evict.clone()));
                let stopped = stopped.clone();
                let serve = serve.clone();
                let tls = tls.clone();
                metrics::connection_opened(port);
                connections.spawn(async move {
                    let io = match tls {
                        None => Ok(Io::Plain(stream)),
                        Some(tls) => handshake(&tls, stream, &activity, limits, stopped.clone(), &evict).await,
                    };
                    let reason = match io {
                        Ok(io) => {
                            let connection = serve(io, activity.clone());
                            drive(connection, &activity, limits, drain, stopped, &evict).await
                        }
                        Err(reason) => reason,
                    };
                    metrics::connection_closed(port, reason);
                    drop(slot);
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let _ = stop.send(true);
    while connections.join_next().await.is_some() {}
}

/// How long a connection arriving at the limit waits for the slot of the
/// silent connection it evicted.
const EVICTION_WAIT: Duration = Duration::from_millis(100);

/// At the connection limit: asks the oldest connection that has not sent a
/// request yet to go, so that silent sockets (slowloris, a peer holding
/// connections open) cannot starve clients that talk, such as readiness
/// probes. Returns whether there was one.
fn evict_silent(live: &mut VecDeque<(Arc<Activity>, Arc<tokio::sync::Notify>)>) -> bool {
    live.retain(|(a, _)| Arc::strong_count(a) > 1);
    let silent = live.iter().position(|(a, _)| !a.seen_call.load(Ordering::Relaxed));
    match silent.and_then(|i| live.remove(i)) {
        Some((_, evict)) => {
            evict.notify_one();
            true
        }
        None => false,
    }
}

/// Runs the TLS handshake of a connection that has sent nothing yet: it
/// ends as such a connection would (handshake timeout, eviction, shutdown),
/// or with [`ConnectionClose::Tls`] when the handshake fails.
async fn handshake(
    tls: &Acceptor,
    stream: tokio::net::TcpStream,
    activity: &Activity,
    limits: ConnectionLimits,
    mut stopped: watch::Receiver<bool>,
    evict: &tokio::sync::Notify,
) -> Result<Io, ConnectionClose> {
    tokio::select! {
        () = evict.notified() => Err(ConnectionClose::Evicted),
        () = async { drop(stopped.wait_for(|s| *s).await) } => Err(ConnectionClose::Shutdown),
        reason = activity.expired(limits) => Err(reason),
        accepted = tls.accept(stream) => match accepted {
            Ok(stream) => Ok(Io::Tls(Box::new(stream))),
            Err(e) => {
                tracing::debug!("TLS handshake failed: {e}");
                Err(ConnectionClose::Tls)
            }
        },
    }
}

/// Runs one connection to its end; returns why it ended.
async fn drive<C: Graceful>(
    connection: C,
    activity: &Activity,
    limits: ConnectionLimits,
    drain: Duration,
    mut stopped: watch::Receiver<bool>,
    evict: &tokio::sync::Notify,
) -> ConnectionClose {
    let mut connection = pin!(connection);
    let (result, reason, grace) = tokio::select! {
        // Never sent a request: nothing to finish, the socket just goes.
        () = evict.notified() => return ConnectionClose::Evicted,
        result = connection.as_mut() => (Some(result), ConnectionClose::Peer, Duration::ZERO),
        () = async { drop(stopped.wait_for(|s| *s).await) } => (None, ConnectionClose::Shutdown, drain + CLOSE_GRACE),
        reason = activity.expired(limits) => (None, reason, CLOSE_GRACE),
    };
    let result = match result {
        Some(result) => Some(result),
        None => {
            connection.as_mut().close();
            tokio::time::timeout(grace, connection).await.ok()
        }
    };
    match result {
        // hyper's own HTTP/1 header read timeout: the handshake bound.
        Some(Err(e)) if e.is_timeout() => ConnectionClose::Handshake,
        Some(Err(e)) => {
            tracing::debug!("connection ended: {e}");
            reason
        }
        None => {
            tracing::debug!("connection dropped: it did not close within its grace");
            reason
        }
        Some(Ok(())) => reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ConnectionLimits {
        ConnectionLimits {
            max: 2,
            idle_timeout: Duration::from_secs(60),
            handshake_timeout: Duration::from_secs(10),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_a_first_call_expires_after_the_handshake_timeout() {
        let activity = Activity::new();
        let started = tokio::time::Instant::now();
        assert_eq!(activity.expired(limits()).await, ConnectionClose::Handshake);
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_expires_idle_timeout_after_its_last_call_and_never_while_one_is_open() {
        let activity = Arc::new(Activity::new());
        let call = activity.begin();
        let started = tokio::time::Instant::now();
        let expired = tokio::spawn({
            let activity = activity.clone();
            async move { activity.expired(limits()).await }
        });
        // Open for ten minutes (virtual time): not idle.
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert!(!expired.is_finished());
        drop(call);
        assert_eq!(expired.await.unwrap(), ConnectionClose::Idle);
        assert!(started.elapsed() >= Duration::from_secs(660), "{:?}", started.elapsed());
    }
}
