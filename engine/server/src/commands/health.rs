//! `vitrine health`: the gRPC health check (grpc.health.v1) by the binary
//! itself, for a Docker `HEALTHCHECK` or a Kubernetes exec probe where no
//! curl or grpcurl is installed.
//!
//! With `--tls-ca` the port is dialled over TLS (a server with
//! `--tls-cert`), and with `--tls-cert`/`--tls-key` it presents a client
//! certificate (a server with `--tls-client-ca`).
//!
//! Exit codes: 0 SERVING; 1 NOT_SERVING, UNKNOWN or a service the server
//! does not know; 2 unreachable (no connection, or no answer in time) or a
//! bad flag.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::cli::HealthArgs;

/// What the check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The service is SERVING.
    Serving,
    /// The server answered, and not SERVING (the status or the gRPC error).
    NotServing(String),
    /// No answer: the reason.
    Unreachable(String),
}

impl Outcome {
    /// The process exit code.
    pub fn code(&self) -> u8 {
        match self {
            Outcome::Serving => 0,
            Outcome::NotServing(_) => 1,
            Outcome::Unreachable(_) => 2,
        }
    }
}

/// `HOST:PORT` (or a URL) as a URL to dial: a wildcard listen host
/// (`0.0.0.0`, `[::]`) becomes loopback, so `serve`'s own
/// `VITRINE_GRPC_ADDR` can be used as is.
pub fn target(addr: &str) -> String {
    let addr = addr.trim();
    let (scheme, rest) = match addr.split_once("://") {
        Some((scheme, rest)) => (scheme, rest),
        None => ("http", addr),
    };
    let rest = if let Some(port) = rest.strip_prefix("0.0.0.0:") {
        format!("127.0.0.1:{port}")
    } else if let Some(port) = rest.strip_prefix("[::]:") {
        format!("[::1]:{port}")
    } else {
        rest.to_string()
    };
    format!("{scheme}://{rest}")
}

/// Asks `addr` about `service`, all within `timeout`.
pub async fn check(addr: &str, service: &str, timeout: Duration) -> Outcome {
    check_with(addr, service, timeout, None).await
}

/// [`check`], over TLS with `tls`.
pub async fn check_with(addr: &str, service: &str, timeout: Duration, tls: Option<ClientTlsConfig>) -> Outcome {
    let mut url = target(addr);
    if tls.is_some() {
        if let Some(rest) = url.strip_prefix("http://") {
            url = format!("https://{rest}");
        }
    }
    let endpoint = match Endpoint::from_shared(url) {
        Ok(e) => e.connect_timeout(timeout).timeout(timeout),
        Err(e) => return Outcome::Unreachable(format!("`{addr}`: {e}")),
    };
    let endpoint = match tls {
        None => endpoint,
        Some(tls) => match endpoint.tls_config(tls) {
            Ok(e) => e,
            Err(e) => return Outcome::Unreachable(format!("TLS: {}", describe(&e))),
        },
    };
    let call = async {
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| Outcome::Unreachable(describe(&e)))?;
        let request = HealthCheckRequest {
            service: service.to_string(),
        };
        HealthClient::new(channel)
            .check(request)
            .await
            .map_err(|status| match status.code() {
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
                    Outcome::Unreachable(status.message().to_string())
                }
                code => Outcome::NotServing(format!("{code:?}: {}", status.message())),
            })
    };
    match tokio::time::timeout(timeout, call).await {
        Err(_) => Outcome::Unreachable(format!("no answer within {timeout:?}")),
        Ok(Err(outcome)) => outcome,
        Ok(Ok(response)) => match ServingStatus::try_from(response.into_inner().status) {
            Ok(ServingStatus::Serving) => Outcome::Serving,
            Ok(status) => Outcome::NotServing(status.as_str_name().to_string()),
            Err(_) => Outcome::NotServing("an unknown status".to_string()),
        },
    }
}

/// An error with its causes (tonic's top level says only "transport error").
fn describe(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The TLS client of `--tls-ca` (and `--tls-cert`/`--tls-key`), if asked for.
fn client_tls(args: &HealthArgs) -> Result<Option<ClientTlsConfig>, String> {
    client_tls_config(
        &args.addr,
        args.tls_ca.as_deref(),
        args.tls_name.as_deref(),
        args.tls_cert.as_deref().zip(args.tls_key.as_deref()),
    )
}

/// A TLS client trusting the CAs of `ca` (PEM), checking the server's name
/// (`name`, else the host of `addr`), presenting `identity` (certificate and
/// key PEM files) when given; `None` without `ca`. Shared by the commands
/// that dial a server (`health`, `rules push`).
pub fn client_tls_config(
    addr: &str,
    ca: Option<&std::path::Path>,
    name: Option<&str>,
    identity: Option<(&std::path::Path, &std::path::Path)>,
) -> Result<Option<ClientTlsConfig>, String> {
    let Some(ca) = ca else {
        if identity.is_some() {
            return Err("--tls-cert: needs --tls-ca".to_string());
        }
        return Ok(None);
    };
    let read = |path: &std::path::Path| std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()));
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
    let name = match name {
        Some(name) => Some(name.to_string()),
        None => http::Uri::try_from(target(addr)).ok().and_then(|u| {
            u.host()
                .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_string())
        }),
    };
    if let Some(name) = name {
        tls = tls.domain_name(name);
    }
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(Some(tls))
}

/// A channel to `addr`, over TLS when `tls` is set.
pub async fn channel(addr: &str, tls: Option<ClientTlsConfig>) -> Result<tonic::transport::Channel, String> {
    let mut url = target(addr);
    if tls.is_some() {
        if let Some(rest) = url.strip_prefix("http://") {
            url = format!("https://{rest}");
        }
    }
    let mut endpoint = Endpoint::from_shared(url).map_err(|e| format!("`{addr}`: {e}"))?;
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).map_err(|e| format!("TLS: {}", describe(&e)))?;
    }
    endpoint.connect().await.map_err(|e| describe(&e))
}

/// Runs the command: one line on `out` (SERVING) or standard error.
pub fn run(args: &HealthArgs, out: &mut impl Write) -> ExitCode {
    let timeout = match crate::config::parse_duration(&args.timeout) {
        Ok(t) if !t.is_zero() => t,
        _ => {
            eprintln!(
                "vitrine health: --timeout: `{}` is not a duration such as 500ms, 2s",
                args.timeout
            );
            return ExitCode::from(2);
        }
    };
    let tls = match client_tls(args) {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("vitrine health: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vitrine health: {e}");
            return ExitCode::from(2);
        }
    };
    let outcome = runtime.block_on(check_with(&args.addr, &args.service, timeout, tls));
    match &outcome {
        Outcome::Serving => {
            let _ = writeln!(out, "SERVING");
        }
        Outcome::NotServing(why) => eprintln!("vitrine health: {}: {why}", args.addr),
        Outcome::Unreachable(why) => eprintln!("vitrine health: {} unreachable: {why}", args.addr),
    }
    ExitCode::from(outcome.code())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_hosts_are_asked_on_loopback() {
        assert_eq!(target("0.0.0.0:50051"), "http://127.0.0.1:50051");
        assert_eq!(target("[::]:50051"), "http://[::1]:50051");
        assert_eq!(target("10.0.0.7:50051"), "http://10.0.0.7:50051");
        assert_eq!(target("http://127.0.0.1:1"), "http://127.0.0.1:1");
    }
}
