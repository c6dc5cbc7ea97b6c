//! Connections to the server under test and the admin bearer token.

use std::time::Duration;

use anyhow::{bail, Context as _};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::Request;

/// The endpoint for `addr`: `HOST:PORT` or `http://HOST:PORT`.
pub fn endpoint(addr: &str) -> anyhow::Result<Endpoint> {
    let uri = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    if uri.starts_with("https://") {
        bail!("--addr {addr}: TLS is not supported by the load generator; use HOST:PORT");
    }
    Ok(Endpoint::from_shared(uri)
        .with_context(|| format!("--addr {addr} is not HOST:PORT"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        // Open loop: never make a call wait for room in the client's queue.
        .buffer_size(65_536))
}

/// `n` (at least one) separate HTTP/2 connections to `addr`.
pub async fn connect(addr: &str, n: usize) -> anyhow::Result<Vec<Channel>> {
    let endpoint = endpoint(addr)?;
    let mut channels = Vec::with_capacity(n.max(1));
    for _ in 0..n.max(1) {
        let channel = endpoint
            .connect()
            .await
            .with_context(|| format!("cannot connect to {addr}: is `vitrine serve` running there?"))?;
        channels.push(channel);
    }
    Ok(channels)
}

/// The `authorization: Bearer <token>` header of admin calls, if any.
#[derive(Debug, Clone, Default)]
pub struct Auth(Option<MetadataValue<Ascii>>);

impl Auth {
    /// The header for `token`; none for `None` or an empty token.
    pub fn new(token: Option<&str>) -> anyhow::Result<Auth> {
        match token.filter(|t| !t.is_empty()) {
            None => Ok(Auth(None)),
            Some(t) => MetadataValue::try_from(format!("Bearer {t}"))
                .map(|v| Auth(Some(v)))
                .map_err(|_| anyhow::anyhow!("--admin-token must be printable ASCII")),
        }
    }

    /// `message` as a request carrying the header.
    pub fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        if let Some(v) = &self.0 {
            request.metadata_mut().insert("authorization", v.clone());
        }
        request
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_with_or_without_scheme() {
        assert_eq!(
            endpoint("127.0.0.1:50071").unwrap().uri().to_string(),
            "http://127.0.0.1:50071/"
        );
        assert_eq!(
            endpoint("http://localhost:1").unwrap().uri().to_string(),
            "http://localhost:1/"
        );
        assert!(endpoint("https://localhost:1").is_err());
        assert!(endpoint("not a host").is_err());
    }

    #[test]
    fn bearer_header() {
        let r = Auth::new(Some("s3cret")).unwrap().request(());
        assert_eq!(r.metadata().get("authorization").unwrap(), "Bearer s3cret");
        assert!(Auth::new(None)
            .unwrap()
            .request(())
            .metadata()
            .get("authorization")
            .is_none());
        assert!(Auth::new(Some(""))
            .unwrap()
            .request(())
            .metadata()
            .get("authorization")
            .is_none());
        assert!(Auth::new(Some("bad\ntoken")).is_err());
    }
}
