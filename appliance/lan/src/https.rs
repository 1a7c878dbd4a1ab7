//! Serving an axum [`Router`] over HTTPS (rustls through tokio-rustls) or plain HTTP, HTTP/1.1
//! through hyper, with the same limits on both and a graceful shutdown on a watch signal.
//!
//! Why tokio-rustls + hyper-util and not axum-server: this is ~100 lines we control — a
//! handshake timeout, a header-read timeout, a connection cap and the same graceful-shutdown
//! signal as every other task — built from the crates axum itself sits on, with nothing
//! extra to audit or to wait on when axum or rustls move. (axum-server would do the same with
//! one more dependency that has lagged behind axum releases.)

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

use crate::Error;

/// Limits for the HTTPS server.
#[derive(Debug, Clone)]
pub struct HttpsOptions {
    /// A client that has not finished the TLS handshake by then is dropped.
    pub handshake_timeout: Duration,
    /// A client that has not sent a request's headers by then is dropped.
    pub header_timeout: Duration,
    /// Connections served at once; further ones wait in the kernel's accept queue.
    pub max_connections: usize,
    /// After the shutdown signal, how long open connections may finish their requests.
    pub grace: Duration,
}

impl Default for HttpsOptions {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(30),
            max_connections: 512,
            grace: Duration::from_secs(10),
        }
    }
}

/// Marks a request that arrived over HTTPS (in the request's extensions), for handlers that
/// set `Secure` cookies.
#[derive(Debug, Clone, Copy)]
pub struct OverHttps;

/// Serves `app` over TLS on `listener` until `shutdown` turns true; then stops accepting, lets
/// open connections finish for `options.grace`, and returns. Each request carries
/// [`ConnectInfo<SocketAddr>`] (the peer) and [`OverHttps`] in its extensions. Bad clients —
/// garbage bytes, stalled handshakes, stalled headers — cost only their own connection.
pub async fn serve_https(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    options: HttpsOptions,
    shutdown: watch::Receiver<bool>,
) -> Result<(), Error> {
    serve(
        listener,
        Some(TlsAcceptor::from(tls)),
        app,
        options,
        shutdown,
    )
    .await
}

/// Serves `app` over plain HTTP with the same limits as [`serve_https`]: header-read timeout
/// (slowloris), bounded header size (431), connection cap, graceful shutdown. Each request
/// carries [`ConnectInfo<SocketAddr>`].
pub async fn serve_http(
    listener: TcpListener,
    app: Router,
    options: HttpsOptions,
    shutdown: watch::Receiver<bool>,
) -> Result<(), Error> {
    serve(listener, None, app, options, shutdown).await
}

/// Largest request head (request line + headers) accepted; more gets 431. hyper's minimum.
const MAX_HEAD_BYTES: usize = 16 * 1024;

async fn serve(
    listener: TcpListener,
    acceptor: Option<TlsAcceptor>,
    app: Router,
    options: HttpsOptions,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), Error> {
    let local = listener
        .local_addr()
        .map_err(|source| Error::Accept { addr: None, source })?;
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(options.max_connections.max(1)));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = crate::stopped(&mut shutdown) => break,
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    log::warn!(addr:% = local, error:% = e; "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = crate::stopped(&mut shutdown) => break,
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        let watcher = graceful.watcher();
        let options = options.clone();
        connections.spawn(async move {
            let _permit = permit;
            let Some(acceptor) = acceptor else {
                serve_connection(TokioIo::new(tcp), peer, false, app, &options, watcher).await;
                return;
            };
            let stream =
                match tokio::time::timeout(options.handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        log::debug!(peer:% = peer, error:% = e; "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        log::debug!(peer:% = peer; "TLS handshake timed out");
                        return;
                    }
                };
            serve_connection(TokioIo::new(stream), peer, true, app, &options, watcher).await;
        });
    }
    drop(listener);
    if tokio::time::timeout(options.grace, graceful.shutdown())
        .await
        .is_err()
    {
        log::warn!(addr:% = local; "connections still open after the grace period; closing them");
    }
    connections.shutdown().await;
    Ok(())
}

async fn serve_connection<I>(
    io: I,
    peer: SocketAddr,
    over_https: bool,
    app: Router,
    options: &HttpsOptions,
    watcher: hyper_util::server::graceful::Watcher,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        if over_https {
            req.extensions_mut().insert(OverHttps);
        }
        let app = app.clone();
        async move { Ok::<_, Infallible>(app.oneshot(req).await.unwrap_or_else(|e| match e {})) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .serve_connection(io, service);
    if let Err(e) = watcher.watch(conn).await {
        log::debug!(peer:% = peer, error:% = e; "connection ended with an error");
    }
}

/// Binds `addr` for [`serve_https`] (or for the plain-HTTP side).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Accept {
            addr: Some(addr),
            source,
        })
}
