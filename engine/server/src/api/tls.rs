//! TLS on both ports: with `--tls-cert` and `--tls-key` the gRPC port
//! speaks HTTP/2 over TLS only (ALPN `h2`) and the HTTP port (`/metrics`,
//! `/healthz`, `/readyz`) HTTP/1.1 over TLS only (ALPN `http/1.1`); with
//! `--tls-client-ca` too, a client must present a certificate signed by
//! that CA (mutual TLS).
//!
//! The handshake runs on the connection's own task
//! ([`crate::api::connections`]), bounded by `--handshake-timeout` like a
//! connection that has not sent its first request: a peer that never
//! finishes it holds a slot no longer than a silent one, and can be evicted
//! like one. A failed handshake closes the connection, counted as
//! `vitrine_connections_closed_total{reason="tls"}`.
//!
//! Certificates are renewed without a restart: [`Tls::watch`] looks at the
//! files' modification time and size every `--tls-reload`, and when they
//! changed, builds new configurations from them and swaps them in
//! (connections already open keep the one they started with). A pair that
//! does not parse, or whose key does not match its certificate (a renewal
//! caught half-written), is logged and counted, and the old pair keeps
//! serving; the next change is tried again.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// A PEM file larger than this is refused (a certificate chain is a few KiB).
const MAX_PEM_BYTES: u64 = 1 << 20;

/// The files TLS is configured from (`--tls-*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The server's certificate chain, PEM, leaf first.
    pub cert: PathBuf,
    /// The certificate's private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by one of these CAs.
    pub client_ca: Option<PathBuf>,
    /// How often the files are checked for changes.
    pub reload: Duration,
}

impl TlsFiles {
    /// The TLS flags of `serve` (`--tls-reload` already parsed by
    /// [`crate::config`], `None` when it was wrong): `None` when TLS is off
    /// (or a flag is wrong: then the problem is in `problems`).
    pub fn from_flags(
        cert: Option<&Path>,
        key: Option<&Path>,
        client_ca: Option<&Path>,
        reload: Option<Duration>,
        problems: &mut Vec<String>,
    ) -> Option<TlsFiles> {
        match (cert, key) {
            (Some(cert), Some(key)) => {
                let files = TlsFiles {
                    cert: cert.to_path_buf(),
                    key: key.to_path_buf(),
                    client_ca: client_ca.map(Path::to_path_buf),
                    reload: reload?,
                };
                // Read now, so that a wrong file is reported with every other problem.
                match server_configs(&files) {
                    Ok(_) => Some(files),
                    Err(e) => {
                        problems.push(format!("--tls-cert, --tls-key, --tls-client-ca: {e}"));
                        None
                    }
                }
            }
            (None, None) => {
                if client_ca.is_some() {
                    problems.push("--tls-client-ca: needs --tls-cert and --tls-key".to_string());
                }
                None
            }
            _ => {
                problems.push("--tls-cert and --tls-key: give both or neither".to_string());
                None
            }
        }
    }
}

/// Why the TLS files could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        error: io::Error,
    },
    /// A file is not PEM of what it should hold.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
    /// rustls refused the pair (a key that does not match the certificate, ...).
    #[error("{0}")]
    Rustls(String),
}

/// The TLS side of one port: hands each new connection the current configuration.
#[derive(Clone)]
pub struct Acceptor(Arc<ArcSwap<ServerConfig>>);

impl std::fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Acceptor")
    }
}

impl Acceptor {
    /// Runs the server side of the handshake on `stream`.
    pub async fn accept(&self, stream: TcpStream) -> io::Result<TlsStream<TcpStream>> {
        TlsAcceptor::from(self.0.load_full()).accept(stream).await
    }
}

/// TLS for both ports, reloaded when its files change.
#[derive(Debug)]
pub struct Tls {
    /// For the gRPC port (ALPN h2).
    pub grpc: Acceptor,
    /// For the HTTP port (ALPN http/1.1).
    pub http: Acceptor,
    files: TlsFiles,
    /// The files as they were last read.
    seen: Mutex<Stamp>,
}

/// Modification time and size of each file: what a renewal changes.
type Stamp = Vec<Option<(SystemTime, u64)>>;

impl Tls {
    /// Reads the files; fails when they do not make a valid configuration.
    pub fn load(files: TlsFiles) -> Result<Tls, TlsError> {
        let seen = stamp(&files);
        let (grpc, http) = server_configs(&files)?;
        Ok(Tls {
            grpc: Acceptor(Arc::new(ArcSwap::from_pointee(grpc))),
            http: Acceptor(Arc::new(ArcSwap::from_pointee(http))),
            files,
            seen: Mutex::new(seen),
        })
    }

    /// When the files changed since last read: reads them and, if they make
    /// a valid configuration, serves it. Returns what happened, `None` when
    /// nothing changed.
    pub fn reload_if_changed(&self) -> Option<Result<(), TlsError>> {
        let now = stamp(&self.files);
        {
            let mut seen = self.seen.lock();
            if *seen == now {
                return None;
            }
            // Tried once per change: a bad pair is reported once, not every poll.
            *seen = now;
        }
        let result = server_configs(&self.files).map(|(grpc, http)| {
            self.grpc.0.store(Arc::new(grpc));
            self.http.0.store(Arc::new(http));
        });
        crate::metrics::tls_reloaded(result.is_ok());
        Some(result)
    }

    /// Checks the files every `--tls-reload` until `stopped`.
    pub async fn watch(self: Arc<Self>, mut stopped: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = stopped.wait_for(|s| *s) => return,
                () = tokio::time::sleep(self.files.reload) => {}
            }
            let tls = self.clone();
            let outcome = tokio::task::spawn_blocking(move || tls.reload_if_changed()).await;
            match outcome {
                Ok(Some(Ok(()))) => tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded"),
                Ok(Some(Err(e))) => {
                    tracing::warn!("TLS files changed but cannot be used, the previous certificate keeps serving: {e}")
                }
                Ok(None) => {}
                Err(e) => tracing::warn!("TLS reload task: {e}"),
            }
        }
    }
}

fn stamp(files: &TlsFiles) -> Stamp {
    [Some(&files.cert), Some(&files.key), files.client_ca.as_ref()]
        .into_iter()
        .flatten()
        .map(|path| {
            std::fs::metadata(path)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

fn read_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    let read = |error| TlsError::Read {
        path: path.to_path_buf(),
        error,
    };
    let len = std::fs::metadata(path).map_err(read)?.len();
    if len > MAX_PEM_BYTES {
        return Err(TlsError::Pem {
            path: path.to_path_buf(),
            what: format!("{len} bytes, more than the {MAX_PEM_BYTES} a PEM file may have"),
        });
    }
    std::fs::read(path).map_err(read)
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_pem(path)?;
    let bad = |what: String| TlsError::Pem {
        path: path.to_path_buf(),
        what,
    };
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not a PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(bad("no certificate (-----BEGIN CERTIFICATE-----) in it".to_string()));
    }
    Ok(certs)
}

/// The configurations of the gRPC and HTTP ports, from the files.
fn server_configs(files: &TlsFiles) -> Result<(ServerConfig, ServerConfig), TlsError> {
    let certs = certificates(&files.cert)?;
    let key = PrivateKeyDer::from_pem_slice(&read_pem(&files.key)?).map_err(|e| TlsError::Pem {
        path: files.key.clone(),
        what: format!("not a PEM private key: {e}"),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates(path)? {
                roots.add(cert).map_err(|e| TlsError::Pem {
                    path: path.clone(),
                    what: format!("not a CA certificate: {e}"),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::Rustls(format!("--tls-client-ca: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut grpc = builder
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Rustls(format!("the key and certificate do not make a pair: {e}")))?;
    let mut http = grpc.clone();
    grpc.alpn_protocols = vec![b"h2".to_vec()];
    http.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((grpc, http))
}

/// A connection's byte stream: plain TCP or TLS over it.
#[derive(Debug)]
pub enum Io {
    /// Without TLS.
    Plain(TcpStream),
    /// After a completed TLS handshake.
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
