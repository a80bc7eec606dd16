//! The HTTP accept loop every listener uses (gateway, query service, ops): hyper 1 HTTP/1.1 with
//! a header read timeout, one task per connection, and graceful shutdown that stops accepting,
//! lets in-flight requests finish within a bound, then returns. It serves TCP listeners and, for
//! the query service's co-located hop (`CLS_QUERY_SOCKET`), a Unix socket.

use std::convert::Infallible;
use std::fmt::Debug;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;

/// Every response body CLS writes is a complete buffer.
pub type Body = Full<Bytes>;

/// How long a client may take to send its request headers before the connection is closed.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What [`serve`] takes connections from.
pub trait Listener: Send + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// Who is on the other end, as the handler sees it.
    type Peer: Debug + Copy + Send + Sync + 'static;
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Io, Self::Peer)>> + Send;
}

impl Listener for TcpListener {
    type Io = tokio::net::TcpStream;
    type Peer = SocketAddr;
    async fn accept(&self) -> io::Result<(Self::Io, SocketAddr)> {
        let (stream, peer) = TcpListener::accept(self).await?;
        let _ = stream.set_nodelay(true);
        Ok((stream, peer))
    }
}

/// Serves `handler` on `listener` until `shutdown` is cancelled, then drains open connections
/// for at most `grace`.
pub async fn serve<L, F, Fut>(listener: L, handler: F, shutdown: CancellationToken, grace: Duration)
where
    L: Listener,
    F: Fn(Request<Incoming>, L::Peer) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT).max_buf_size(64 * 1024);
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // Typically EMFILE: back off briefly instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let handler = handler.clone();
        let service = service_fn(move |req| {
            let handler = handler.clone();
            async move { Ok::<_, Infallible>(handler(req, peer).await) }
        });
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let watched = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = watched.await {
                tracing::debug!(%error, ?peer, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!("connections still open after the shutdown grace period");
    }
}

/// Binds a listener; port 0 picks a free port (tests), read it back with `local_addr`.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))
}

/// A Unix socket listener at `path` that removes its file when dropped. A file left there by a
/// process that is gone is replaced; a socket something still answers on is not.
pub struct UnixSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl UnixSocket {
    pub fn bind(path: &Path) -> anyhow::Result<UnixSocket> {
        use std::os::unix::fs::FileTypeExt;
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            anyhow::ensure!(meta.file_type().is_socket(), "{} exists and is not a socket", path.display());
            anyhow::ensure!(
                std::os::unix::net::UnixStream::connect(path).is_err(),
                "another process listens on {}",
                path.display()
            );
            std::fs::remove_file(path).map_err(|e| anyhow::anyhow!("cannot remove the stale socket {}: {e}", path.display()))?;
        }
        let listener = UnixListener::bind(path).map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", path.display()))?;
        Ok(UnixSocket { listener, path: path.to_owned() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for UnixSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A Unix socket's peers are processes on this host, without an address.
impl Listener for UnixSocket {
    type Io = tokio::net::UnixStream;
    type Peer = ();
    async fn accept(&self) -> io::Result<(Self::Io, ())> {
        let (stream, _) = self.listener.accept().await?;
        Ok((stream, ()))
    }
}

/// A response with a body and content type.
pub fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(content_type));
    response
}

/// A JSON response.
pub fn json(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    respond(status, "application/json", body)
}
