//! The gRPC transport: HTTP/2 connections served by hyper, with admission
//! control where a request arrives.
//!
//! Why not tonic's own server loop: it hands a request to the service stack
//! only when the request's task first runs, so no tower layer can see how
//! long a request sat in the runtime's queue behind others, and it lets a
//! client open any number of streams. Here the arrival instant is read when
//! hyper accepts the stream, on the connection's task, a connection may
//! carry at most `--max-in-flight` streams, and a call is answered
//! RESOURCE_EXHAUSTED without running its handler when
//! - `--max-in-flight` calls have arrived and are not answered yet, or
//! - it waited longer than `--max-queue-wait` before its turn came.
//!
//! Measured past saturation (README, Overload): the server pinned to a core
//! shared with two busy loops, Decide offered at 30,000/s. Through tonic's
//! loop, p99 2.6-2.9 s and ~150,000 calls failed as Unknown (connections
//! lost); through this one, p99 78-168 ms, more calls answered (83-84
//! thousand against 63-74), and the excess refused RESOURCE_EXHAUSTED.
//!
//! A call whose deadline (`--request-timeout`, or the client's shorter
//! `grpc-timeout`) passes while it waits is answered DEADLINE_EXCEEDED, and
//! one that runs past it is cut off the same way. Health checks are always
//! admitted: liveness probes must not fail because the server is busy.
//! A shed call never reached its handler, so nothing of it was applied.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tonic::body::Body;
use tonic::codegen::Service as _;
use tonic::service::Routes;
use tonic::Status;

use crate::api::connections::{accept_loop, Activity, ConnectionLimits};
use crate::metrics::{self, Port, ShedReason};

/// When a call is refused before its handler runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Calls admitted and not yet answered, at most.
    pub max_in_flight: usize,
    /// The longest a call may wait for its turn; `None` = no bound.
    pub max_queue_wait: Option<Duration>,
    /// The longest a call may take, from arrival (a shorter `grpc-timeout` wins).
    pub request_timeout: Duration,
}

/// The status a call shed for `reason` gets, after waiting `waited`.
fn shed_status(reason: ShedReason, waited: Duration) -> Status {
    match reason {
        ShedReason::InFlight => {
            Status::resource_exhausted("the server is at its concurrency limit (--max-in-flight); retry with backoff")
        }
        ShedReason::QueueWait => Status::resource_exhausted(format!(
            "the server is overloaded: this call waited {} us for its turn (--max-queue-wait); retry with backoff",
            waited.as_micros()
        )),
        ShedReason::Deadline => Status::deadline_exceeded(format!(
            "the call's deadline passed after {} us waiting for its turn",
            waited.as_micros()
        )),
    }
}

/// The admission state shared by every connection.
#[derive(Debug)]
struct Gate {
    limits: Limits,
    in_flight: AtomicUsize,
}

/// One admitted-and-unanswered call; dropping it frees its place.
struct Ticket(Arc<Gate>);

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The largest header list a request may send, in bytes (h2's and
/// grpc-go's default for what they accept).
pub const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;

/// The per-connection hyper service in front of tonic's routes.
#[derive(Debug, Clone)]
struct Admit {
    routes: Routes,
    gate: Arc<Gate>,
    /// The connection's activity, for its idle timeout (`None` in unit tests).
    activity: Option<Arc<Activity>>,
}

type ResponseFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

impl<B> hyper::service::Service<Request<B>> for Admit
where
    Routes: tonic::codegen::Service<Request<B>, Response = Response<Body>, Error = Infallible>,
    <Routes as tonic::codegen::Service<Request<B>>>::Future: Send,
    B: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = ResponseFuture;

    /// Runs on the connection's task as the stream arrives: the arrival
    /// instant and the in-flight count are taken here, before any queueing.
    fn call(&self, request: Request<B>) -> ResponseFuture {
        let arrived = Instant::now();
        let exempt = request.uri().path().starts_with("/grpc.health.v1.Health/");
        let gate = &self.gate;
        let in_flight = gate.in_flight.fetch_add(1, Ordering::Relaxed);
        let ticket = Ticket(gate.clone());
        let call = self.activity.as_ref().map(Activity::begin);
        let limits = gate.limits;
        let timeout = grpc_timeout(&request).map_or(limits.request_timeout, |t| t.min(limits.request_timeout));
        // `None`: so far off that it cannot be represented, i.e. never.
        let deadline = arrived.checked_add(timeout);
        let over = !exempt && in_flight >= limits.max_in_flight;
        let mut routes = self.routes.clone();
        Box::pin(async move {
            // First poll: the call's turn has come.
            let _ticket = ticket;
            let _call = call;
            let now = Instant::now();
            let waited = now.saturating_duration_since(arrived);
            let shed = if over {
                Some(ShedReason::InFlight)
            } else if deadline.is_some_and(|d| now >= d) {
                Some(ShedReason::Deadline)
            } else if !exempt && limits.max_queue_wait.is_some_and(|max| waited > max) {
                Some(ShedReason::QueueWait)
            } else {
                None
            };
            if let Some(reason) = shed {
                metrics::shed(method_name(request.uri().path()), reason);
                return Ok(shed_status(reason, waited).into_http());
            }
            let Some(deadline) = deadline else {
                return routes.call(request).await;
            };
            match tokio::time::timeout_at(deadline.into(), routes.call(request)).await {
                Ok(response) => response,
                Err(_) => Ok(Status::deadline_exceeded(format!(
                    "the call ran past its deadline of {} ms (--request-timeout or grpc-timeout)",
                    timeout.as_millis()
                ))
                .into_http()),
            }
        })
    }
}

/// The method part of a gRPC path, as a metric label.
fn method_name(path: &str) -> &'static str {
    const KNOWN: [&str; 9] = [
        "Decide", "Claim", "Push", "Get", "List", "Rollback", "Size", "Track", "Lift",
    ];
    let method = path.rsplit('/').next().unwrap_or("");
    KNOWN.into_iter().find(|m| *m == method).unwrap_or("other")
}

/// The client's `grpc-timeout` header (gRPC over HTTP/2: at most 8 digits
/// and a unit), or `None` when absent or malformed.
fn grpc_timeout<B>(request: &Request<B>) -> Option<Duration> {
    let value = request.headers().get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Serves `routes` on `listener` until `shutdown` completes, then stops
/// accepting, lets every connection finish its calls (HTTP/2 GOAWAY) and
/// returns. Connections are bounded and timed out as `connections` says,
/// and speak TLS with `tls`.
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    limits: Limits,
    connections: ConnectionLimits,
    tls: Option<crate::api::tls::Acceptor>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let routes = routes.prepare();
    let gate = Arc::new(Gate {
        limits,
        in_flight: AtomicUsize::new(0),
    });
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    // A client never needs more streams on one connection than the server
    // admits; header lists are bounded as gRPC clients bound theirs. No
    // `date` header: gRPC clients do not read it, and it is one more header
    // to encode on every response.
    http2
        .timer(TokioTimer::new())
        .auto_date_header(false)
        .max_concurrent_streams(u32::try_from(limits.max_in_flight).unwrap_or(u32::MAX))
        .max_header_list_size(MAX_HEADER_LIST_BYTES);
    accept_loop(
        listener,
        Port::Grpc,
        connections,
        limits.request_timeout,
        tls,
        shutdown,
        move |stream, activity| {
            let service = Admit {
                routes: routes.clone(),
                gate: gate.clone(),
                activity: Some(activity),
            };
            http2.serve_connection(TokioIo::new(stream), service)
        },
    )
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use hyper::service::Service as _;

    use super::*;

    /// An admission gate in front of routes that answer UNIMPLEMENTED: a
    /// call that got through shows status 12, a shed one 8 or 4.
    fn admit(max_in_flight: usize, max_queue_wait: Option<Duration>) -> Admit {
        Admit {
            routes: Routes::default().prepare(),
            gate: Arc::new(Gate {
                limits: Limits {
                    max_in_flight,
                    max_queue_wait,
                    request_timeout: Duration::from_secs(10),
                },
                in_flight: AtomicUsize::new(0),
            }),
            activity: None,
        }
    }

    fn call(admit: &Admit, path: &str, grpc_timeout: Option<&str>) -> ResponseFuture {
        let mut request = Request::builder().uri(path);
        if let Some(t) = grpc_timeout {
            request = request.header("grpc-timeout", t);
        }
        admit.call(request.body(Body::empty()).unwrap())
    }

    async fn status(response: ResponseFuture) -> i32 {
        let response = response.await.unwrap();
        response.headers()["grpc-status"].to_str().unwrap().parse().unwrap()
    }

    const DECIDE: &str = "/vitrine.v1.Decision/Decide";
    const HEALTH: &str = "/grpc.health.v1.Health/Check";
    const UNIMPLEMENTED: i32 = 12;
    const RESOURCE_EXHAUSTED: i32 = 8;
    const DEADLINE_EXCEEDED: i32 = 4;

    #[tokio::test]
    async fn calls_over_the_in_flight_limit_are_shed_and_answered_calls_free_their_place() {
        let admit = admit(2, None);
        let (first, second) = (call(&admit, DECIDE, None), call(&admit, DECIDE, None));
        let third = call(&admit, DECIDE, None);
        let health = call(&admit, HEALTH, None);
        assert_eq!(status(third).await, RESOURCE_EXHAUSTED);
        assert_eq!(status(health).await, UNIMPLEMENTED, "health checks are always admitted");
        assert_eq!(status(first).await, UNIMPLEMENTED);
        assert_eq!(status(second).await, UNIMPLEMENTED);
        assert_eq!(admit.gate.in_flight.load(Ordering::Relaxed), 0);
        assert_eq!(status(call(&admit, DECIDE, None)).await, UNIMPLEMENTED);
    }

    #[tokio::test]
    async fn a_call_that_waited_too_long_for_its_turn_is_shed() {
        let admit = admit(100, Some(Duration::from_millis(5)));
        let waited = call(&admit, DECIDE, None);
        let health = call(&admit, HEALTH, None);
        std::thread::sleep(Duration::from_millis(10));
        assert_eq!(status(waited).await, RESOURCE_EXHAUSTED);
        assert_eq!(status(health).await, UNIMPLEMENTED, "health checks are always admitted");
        assert_eq!(
            status(call(&admit, DECIDE, None)).await,
            UNIMPLEMENTED,
            "a call on time passes"
        );

        let unbounded = self::admit(100, None);
        let waited = call(&unbounded, DECIDE, None);
        std::thread::sleep(Duration::from_millis(10));
        assert_eq!(status(waited).await, UNIMPLEMENTED);
    }

    #[tokio::test]
    async fn a_deadline_too_far_to_represent_is_no_deadline() {
        let mut admit = admit(100, None);
        admit.gate = Arc::new(Gate {
            limits: Limits {
                request_timeout: Duration::MAX,
                ..admit.gate.limits
            },
            in_flight: AtomicUsize::new(0),
        });
        assert_eq!(status(call(&admit, DECIDE, None)).await, UNIMPLEMENTED);
        assert_eq!(status(call(&admit, DECIDE, Some("99999999H"))).await, UNIMPLEMENTED);
    }

    #[tokio::test]
    async fn a_call_whose_deadline_passed_while_waiting_is_not_run() {
        let admit = admit(100, None);
        let late = call(&admit, DECIDE, Some("2m"));
        let in_time = call(&admit, DECIDE, Some("10S"));
        std::thread::sleep(Duration::from_millis(10));
        assert_eq!(status(late).await, DEADLINE_EXCEEDED);
        assert_eq!(status(in_time).await, UNIMPLEMENTED);
    }

    fn with_timeout(value: &str) -> Request<()> {
        Request::builder()
            .header("grpc-timeout", value)
            .body(())
            .unwrap_or_default()
    }

    #[test]
    fn grpc_timeout_header() {
        assert_eq!(grpc_timeout(&with_timeout("250m")), Some(Duration::from_millis(250)));
        assert_eq!(grpc_timeout(&with_timeout("3S")), Some(Duration::from_secs(3)));
        assert_eq!(grpc_timeout(&with_timeout("1H")), Some(Duration::from_secs(3600)));
        assert_eq!(
            grpc_timeout(&with_timeout("99999999n")),
            Some(Duration::from_nanos(99_999_999))
        );
        for bad in ["", "m", "123456789m", "12x", "-1S", "1.5S", "１S"] {
            assert_eq!(grpc_timeout(&with_timeout(bad)), None, "{bad:?}");
        }
        assert_eq!(grpc_timeout(&Request::new(())), None);
    }

    #[test]
    fn method_labels() {
        assert_eq!(method_name("/vitrine.v1.Decision/Decide"), "Decide");
        assert_eq!(method_name("/vitrine.v1.Ingest/Track"), "Track");
        assert_eq!(method_name("/grpc.health.v1.Health/Check"), "other");
        assert_eq!(method_name("/"), "other");
    }
}
