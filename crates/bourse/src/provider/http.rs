//! The upstream HTTP client: hyper's pooled keep-alive client over rustls (bundled web-PKI
//! roots; HTTP/2 when the server offers it by ALPN, else HTTP/1.1), with `HTTPS_PROXY`,
//! `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY` read from the environment once, at start-up.
//!
//! Why not a higher-level client: the gateway needs none of redirects, cookies or
//! decompression, and the benchmark measured a general-purpose client's per-request work
//! (URL re-parsing, service clones, layered futures) at about a tenth of Bourse's CPU per
//! request (bench/RESULTS.md).
//!
//! Proxies: an `https` upstream goes through an HTTP `CONNECT` tunnel (TLS end to end); a
//! plain `http` upstream is sent to the proxy in absolute form, with `Proxy-Authorization`
//! when the proxy URL carries credentials ([`Client::proxy_authorization`]).

use bytes::Bytes;
use http_body_util::Full;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper::Uri;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;
use tower_service::Service;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub type Request = hyper::Request<Full<Bytes>>;
pub type Response = hyper::Response<hyper::body::Incoming>;

/// A pooled client shared by the requests of one provider.
#[derive(Clone, Debug)]
pub struct Client {
    inner: hyper_util::client::legacy::Client<SharedConnector, Full<Bytes>>,
    proxies: Arc<Matcher>,
}

impl Client {
    pub fn new(connect_timeout: Duration) -> Client {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));
        // The TLS layer above hands https URIs down to this connector.
        http.enforce_http(false);
        let (tls, proxies) = shared();
        let proxies = proxies.clone();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls.clone())
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(ProxyConnector { http, proxies: proxies.clone() });
        // No `.timer()`: hyper-util hands it only to HTTP/2 connections, for keep-alive
        // pings, which are not enabled; the pool's idle reaper has its own.
        let inner = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            // Sized for bursts of concurrent streams to one vendor.
            .pool_max_idle_per_host(256)
            .pool_timer(TokioTimer::new())
            .build(SharedConnector(Arc::new(https)));
        Client { inner, proxies }
    }

    pub fn request(&self, req: Request) -> hyper_util::client::legacy::ResponseFuture {
        self.inner.request(req)
    }

    /// `Proxy-Authorization` for requests to `dst`, when they go to a proxy in the clear
    /// (plain `http` upstreams) and the proxy URL has credentials. Tunnels carry their own.
    pub fn proxy_authorization(&self, dst: &Uri) -> Option<hyper::header::HeaderValue> {
        if dst.scheme() != Some(&hyper::http::uri::Scheme::HTTP) {
            return None;
        }
        self.proxies.intercept(dst).and_then(|p| p.basic_auth().cloned())
    }
}

/// What every provider's client shares, built once per process: the TLS configuration
/// (parsing the bundled root certificates) and the proxy settings read from the environment.
fn shared() -> &'static (rustls::ClientConfig, Arc<Matcher>) {
    use hyper_rustls::ConfigBuilderExt;
    static SHARED: std::sync::OnceLock<(rustls::ClientConfig, Arc<Matcher>)> = std::sync::OnceLock::new();
    SHARED.get_or_init(|| {
        let tls = rustls::ClientConfig::builder().with_webpki_roots().with_no_client_auth();
        (tls, Arc::new(Matcher::from_env()))
    })
}

/// The connector behind one reference count. hyper-util's client clones itself, connector
/// included, into every request it sends (not only those that connect); the TLS connector
/// over [`ProxyConnector`] is four `Arc`s, each an atomic increment and decrement per request
/// on a count both workers share. Cloned for real only to open a connection.
#[derive(Clone)]
pub struct SharedConnector(Arc<hyper_rustls::HttpsConnector<ProxyConnector>>);

impl Service<Uri> for SharedConnector {
    type Response = hyper_rustls::MaybeHttpsStream<ProxyStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    /// Always ready, as every layer below is (hyper-util's `HttpConnector` is).
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        (*self.0).clone().call(dst)
    }
}

/// TCP to the upstream, or to the proxy that `HTTP(S)_PROXY` names for it.
#[derive(Clone, Debug)]
pub struct ProxyConnector {
    http: HttpConnector,
    proxies: Arc<Matcher>,
}

impl Service<Uri> for ProxyConnector {
    type Response = ProxyStream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<ProxyStream, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let mut http = self.http.clone();
        let intercept = self.proxies.intercept(&dst);
        Box::pin(async move {
            let Some(proxy) = intercept else {
                return Ok(ProxyStream { io: http.call(dst).await?, via_proxy: false });
            };
            if dst.scheme() == Some(&hyper::http::uri::Scheme::HTTPS) {
                let mut tunnel = Tunnel::new(proxy.uri().clone(), http);
                if let Some(auth) = proxy.basic_auth() {
                    tunnel = tunnel.with_auth(auth.clone());
                }
                std::future::poll_fn(|cx| tunnel.poll_ready(cx)).await?;
                // Inside the tunnel the connection is end to end: not "via proxy" for hyper.
                return Ok(ProxyStream { io: tunnel.call(dst).await?, via_proxy: false });
            }
            Ok(ProxyStream { io: http.call(proxy.uri().clone()).await?, via_proxy: true })
        })
    }
}

/// A TCP stream that knows whether it leads to a forwarding proxy (then hyper writes
/// absolute-form request targets).
#[derive(Debug)]
pub struct ProxyStream {
    io: TokioIo<TcpStream>,
    via_proxy: bool,
}

impl Connection for ProxyStream {
    fn connected(&self) -> Connected {
        // Not `self.io.connected()`: that attaches the socket addresses (`HttpInfo`), which
        // the pool then copies into every response's extensions (three allocations per
        // request) for nobody to read.
        Connected::new().proxy(self.via_proxy)
    }
}

impl Read for ProxyStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: ReadBufCursor<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl Write for ProxyStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}
