//! How the Nomad client reaches Nomad: a byte stream per connection, from a pluggable
//! [`Connector`].
//!
//! The client speaks HTTP/1.1 with hyper over whatever stream the connector yields. Production
//! uses [`TcpConnector`], wrapped in [`MaybeTls`] for `https` addresses; the simulation plugs in a
//! connector over turmoil's TCP (`reference/simulation.md` §1.7 and its appendix), which is why
//! the client cannot use reqwest: reqwest has no way to take a foreign socket type.

use std::fmt;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Opens byte streams to a host and port.
///
/// The one seam between the Nomad client and the network. Implement it for turmoil's
/// `TcpStream` (a `connect((host, port))` call) to run the client inside the simulation.
pub trait Connector: Clone + Send + Sync + 'static {
    /// One connection.
    type Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static;

    /// Opens a connection to `host:port`. `host` is the address's host as written in the
    /// configuration (a name or an IP literal, without brackets).
    fn connect(
        &self,
        host: &str,
        port: u16,
    ) -> impl Future<Output = io::Result<Self::Stream>> + Send;
}

/// Plain TCP through tokio, with Nagle off (requests are small and latency-bound).
#[derive(Clone, Copy, Debug, Default)]
pub struct TcpConnector;

impl Connector for TcpConnector {
    type Stream = tokio::net::TcpStream;

    async fn connect(&self, host: &str, port: u16) -> io::Result<Self::Stream> {
        let stream = tokio::net::TcpStream::connect((host, port)).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

/// Where the TLS material lives (Poseidon's `nomad.tls`: a CA, optionally a client certificate
/// and key for mutual TLS).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// PEM file with the CA certificate(s) that signed Nomad's server certificate. Required:
    /// Nomad clusters run their own CA, and falling back to public roots would accept any
    /// publicly valid certificate.
    pub ca_pem_path: PathBuf,
    /// PEM file with the client certificate chain, for mutual TLS.
    pub client_cert_pem_path: Option<PathBuf>,
    /// PEM file with the client's private key, for mutual TLS.
    pub client_key_pem_path: Option<PathBuf>,
    /// The name to verify the server certificate against, if not the address's host. Nomad's
    /// own certificates name `server.<region>.nomad`, not the host.
    pub server_name: Option<String>,
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// A PEM file could not be read or parsed.
    #[error("cannot read {what} from {path}: {message}")]
    Pem {
        /// Which file it was.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// Only one of client certificate and key was given.
    #[error("mutual TLS needs both a client certificate and a client key")]
    HalfClientIdentity,
    /// rustls rejected the material.
    #[error("invalid TLS material: {0}")]
    Rustls(#[from] rustls::Error),
    /// The configured server name is not a DNS name or IP address.
    #[error("invalid TLS server name {0:?}")]
    ServerName(String),
}

/// A connector that speaks TLS over another connector's streams, or passes them through.
///
/// Generic over the inner connector so TLS runs over turmoil too.
#[derive(Clone)]
pub struct MaybeTls<C> {
    inner: C,
    tls: Option<TlsParts>,
}

#[derive(Clone)]
struct TlsParts {
    connector: tokio_rustls::TlsConnector,
    server_name: Option<ServerName<'static>>,
}

impl<C: fmt::Debug> fmt::Debug for MaybeTls<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MaybeTls")
            .field("inner", &self.inner)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl<C: Connector> MaybeTls<C> {
    /// Streams pass through unencrypted (`http` addresses).
    pub fn plain(inner: C) -> Self {
        MaybeTls { inner, tls: None }
    }

    /// Every stream is wrapped in TLS, verified against the configured CA, with the client
    /// identity if one is configured.
    pub fn tls(inner: C, settings: &TlsSettings) -> Result<Self, TlsSetupError> {
        let config = client_config(settings)?;
        let server_name = settings
            .server_name
            .as_ref()
            .map(|name| {
                ServerName::try_from(name.clone())
                    .map_err(|_| TlsSetupError::ServerName(name.clone()))
            })
            .transpose()?;
        Ok(MaybeTls {
            inner,
            tls: Some(TlsParts {
                connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
                server_name,
            }),
        })
    }
}

/// Builds the rustls configuration with the `ring` provider (aws-lc-rs, rustls' default, needs
/// cmake to build).
fn client_config(settings: &TlsSettings) -> Result<rustls::ClientConfig, TlsSetupError> {
    let pem_error = |what: &'static str, path: &PathBuf| {
        let path = path.clone();
        move |error: rustls::pki_types::pem::Error| TlsSetupError::Pem {
            what,
            path,
            message: error.to_string(),
        }
    };
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_file_iter(&settings.ca_pem_path)
        .map_err(pem_error("the CA certificate", &settings.ca_pem_path))?
    {
        roots.add(certificate.map_err(pem_error("the CA certificate", &settings.ca_pem_path))?)?;
    }
    if roots.is_empty() {
        return Err(TlsSetupError::Pem {
            what: "the CA certificate",
            path: settings.ca_pem_path.clone(),
            message: "no certificate in the file".into(),
        });
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let config = match (
        &settings.client_cert_pem_path,
        &settings.client_key_pem_path,
    ) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert_path), Some(key_path)) => {
            let chain = CertificateDer::pem_file_iter(cert_path)
                .map_err(pem_error("the client certificate", cert_path))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(pem_error("the client certificate", cert_path))?;
            let key = PrivateKeyDer::from_pem_file(key_path)
                .map_err(pem_error("the client key", key_path))?;
            builder.with_client_auth_cert(chain, key)?
        }
        _ => return Err(TlsSetupError::HalfClientIdentity),
    };
    Ok(config)
}

impl<C: Connector> Connector for MaybeTls<C> {
    type Stream = MaybeTlsStream<C::Stream>;

    async fn connect(&self, host: &str, port: u16) -> io::Result<Self::Stream> {
        let stream = self.inner.connect(host, port).await?;
        let Some(tls) = &self.tls else {
            return Ok(MaybeTlsStream::Plain(stream));
        };
        let server_name = match &tls.server_name {
            Some(name) => name.clone(),
            None => ServerName::try_from(host.to_owned())
                .map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error))?,
        };
        let stream = tls.connector.connect(server_name, stream).await?;
        Ok(MaybeTlsStream::Tls(Box::new(stream)))
    }
}

/// A stream of [`MaybeTls`]: plain or TLS.
#[derive(Debug)]
pub enum MaybeTlsStream<S> {
    /// Unencrypted.
    Plain(S),
    /// TLS (boxed: the TLS state is large and the plain variant should not pay for it).
    Tls(Box<tokio_rustls::client::TlsStream<S>>),
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for MaybeTlsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTlsStream::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            MaybeTlsStream::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for MaybeTlsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTlsStream::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            MaybeTlsStream::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTlsStream::Plain(stream) => Pin::new(stream).poll_flush(cx),
            MaybeTlsStream::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTlsStream::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            MaybeTlsStream::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Adapts a [`Connector`] to the `tower::Service<Uri>` hyper-util's pooling client wants.
#[derive(Clone, Debug)]
pub(crate) struct HyperConnector<C>(pub(crate) C);

impl<C: Connector> tower_service::Service<Uri> for HyperConnector<C> {
    type Response = TokioIo<Conn<C::Stream>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connector = self.0.clone();
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no host in the URI"))?
                // IPv6 literals come bracketed in URIs, sockets want them bare.
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
                Some("https") => 443,
                _ => 80,
            });
            let stream = connector.connect(&host, port).await?;
            Ok(TokioIo::new(Conn(stream)))
        })
    }
}

/// A connection as hyper-util wants it: it must implement `Connection`, which foreign stream
/// types (turmoil's) cannot, hence the newtype.
#[derive(Debug)]
pub(crate) struct Conn<S>(S);

impl<S> Connection for Conn<S> {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Conn<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Conn<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}
