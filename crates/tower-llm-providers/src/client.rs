//! The default HTTP client: hyper-util's pooled client over rustls, its TLS and its proxy.
//! The TLS features and the proxy rules are in the [crate docs](crate#tls-and-proxies).

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::error::{ConfigError, config_error};
use crate::proxy::{ProxyConfig, ProxyConnector};
pub use crate::request_body::RequestBody;

/// The default inner service of every provider: hyper-util's legacy client with rustls
/// (provider and roots by Cargo feature, see [TLS and proxies](crate#tls-and-proxies)), HTTP/1.1 and HTTP/2
/// by ALPN, a keep-alive connection pool, a connect timeout and the environment's proxy.
/// Plain `http://` is allowed too, for local OpenAI-compatible servers.
pub type HttpClient = Client<HttpsConnector<ProxyConnector>, RequestBody>;

/// The stream a provider over the default [`HttpClient`] answers a
/// [`Streaming`](crate::Streaming) request with, for naming it in a stack's type.
pub type HttpChatStream = crate::ChatStream<hyper::body::Incoming>;

/// Settings of the default [`HttpClient`].
///
/// ```no_run
/// use tower_llm_providers::{Anthropic, HttpClientConfig, ProxyConfig};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let client = HttpClientConfig::default()
///     .root_certificate(std::fs::read("/etc/ssl/certs/corporate-ca.pem")?)
///     .proxy(ProxyConfig::url("http://proxy.corp:3128").no_proxy("localhost,.corp"))
///     .build()?;
/// let claude = Anthropic::builder().build_with(client)?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct HttpClientConfig {
    /// How long to wait for a TCP connection (default 10 s); through a proxy, for the
    /// connection to the proxy and its handshake (`CONNECT` or SOCKS) together.
    pub connect_timeout: Duration,
    /// How long an idle pooled connection is kept (default 90 s); a century or more means
    /// for as long as the server keeps it open.
    pub pool_idle_timeout: Duration,
    /// The most idle connections kept per host (default 32).
    pub pool_max_idle_per_host: usize,
    /// TCP keep-alive probes on pooled connections (default 60 s).
    pub tcp_keepalive: Option<Duration>,
    /// Root certificates trusted besides the built-in ones (a corporate CA, a test server's
    /// own), each PEM (one or more `CERTIFICATE` blocks) or DER; checked when built.
    pub root_certificates: Vec<Bytes>,
    /// Which proxy connections go through (default: the environment's).
    pub proxy: ProxyConfig,
}

/// Idle timeouts from this long on are treated as none at all.
const NO_IDLE_TIMEOUT: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

impl Default for HttpClientConfig {
    fn default() -> Self {
        HttpClientConfig {
            connect_timeout: Duration::from_secs(10),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 32,
            tcp_keepalive: Some(Duration::from_secs(60)),
            root_certificates: Vec::new(),
            proxy: ProxyConfig::default(),
        }
    }
}

impl fmt::Debug for HttpClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpClientConfig")
            .field("connect_timeout", &self.connect_timeout)
            .field("pool_idle_timeout", &self.pool_idle_timeout)
            .field("pool_max_idle_per_host", &self.pool_max_idle_per_host)
            .field("tcp_keepalive", &self.tcp_keepalive)
            .field("root_certificates", &self.root_certificates.len())
            .field("proxy", &self.proxy)
            .finish()
    }
}

impl HttpClientConfig {
    /// Also trusts this root certificate, PEM (one or more `CERTIFICATE` blocks) or DER: a
    /// corporate CA, a test server's own. [`build`](Self::build) refuses one that does not
    /// parse (knob `root_certificate`).
    pub fn root_certificate(mut self, pem_or_der: impl Into<Bytes>) -> Self {
        self.root_certificates.push(pem_or_der.into());
        self
    }

    /// Sets the proxy (default [`ProxyConfig::from_env`]; [`ProxyConfig::none`] turns
    /// proxies off).
    pub fn proxy(mut self, proxy: ProxyConfig) -> Self {
        self.proxy = proxy;
        self
    }

    /// Builds a client with these settings, reading the environment's proxy variables (unless
    /// [`proxy`](Self::proxy) says otherwise) and, with the `native-roots` feature, the
    /// system's root certificates.
    pub fn build(&self) -> Result<HttpClient, ConfigError> {
        if self.connect_timeout.is_zero() {
            return Err(config_error("connect_timeout", "must be above zero"));
        }
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(self.connect_timeout));
        http.set_nodelay(true);
        http.set_keepalive(self.tcp_keepalive);
        let connector = ProxyConnector::new(http, self.proxy.matcher()?, self.connect_timeout);
        let tls = rustls::ClientConfig::builder_with_provider(crypto_provider()?)
            .with_safe_default_protocol_versions()
            .map_err(|e| config_error("tls", e.to_string()))?
            .with_root_certificates(self.roots()?)
            .with_no_client_auth();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(connector);
        Ok(Client::builder(TokioExecutor::new())
            // hyper-util adds this to the clock in its idle reaper task, which panics on
            // overflow (Duration::MAX): a timeout that long is no timeout.
            .pool_idle_timeout(
                (self.pool_idle_timeout < NO_IDLE_TIMEOUT).then_some(self.pool_idle_timeout),
            )
            .pool_max_idle_per_host(self.pool_max_idle_per_host)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(https))
    }

    /// The roots the features name, plus the configured ones.
    fn roots(&self) -> Result<RootCertStore, ConfigError> {
        let mut roots = RootCertStore::empty();
        #[cfg(feature = "webpki-roots")]
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        #[cfg(feature = "native-roots")]
        {
            // As hyper-rustls' own native roots: a system certificate that does not parse is
            // skipped, not fatal, since one odd file must not take every connection down.
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
        }
        for (index, cert) in self.root_certificates.iter().enumerate() {
            add_root(&mut roots, cert).map_err(|why| {
                config_error("root_certificate", format!("certificate {index}: {why}"))
            })?;
        }
        if roots.is_empty() {
            return Err(config_error(
                "root_certificate",
                "no root certificates to trust: turn on the `webpki-roots` or `native-roots` \
                 feature, or add one",
            ));
        }
        Ok(roots)
    }
}

/// Adds the certificates of one PEM or DER input.
fn add_root(roots: &mut RootCertStore, input: &[u8]) -> Result<(), String> {
    if input.windows(11).any(|w| w == b"-----BEGIN ") {
        let mut found = 0;
        for cert in CertificateDer::pem_slice_iter(input) {
            let cert = cert.map_err(|e| format!("not valid PEM: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("not a usable certificate: {e}"))?;
            found += 1;
        }
        if found == 0 {
            return Err("PEM without a CERTIFICATE block".to_owned());
        }
        return Ok(());
    }
    if input.is_empty() {
        return Err("empty".to_owned());
    }
    roots
        .add(CertificateDer::from(input.to_vec()))
        .map_err(|e| format!("neither PEM nor a DER certificate: {e}"))
}

/// The crypto provider the features pick (aws-lc-rs over ring), else the process default.
fn crypto_provider() -> Result<Arc<CryptoProvider>, ConfigError> {
    #[cfg(feature = "aws-lc-rs")]
    let provider = Some(Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
    // Named explicitly rather than rustls' process-wide default, which is ambiguous (and
    // panics) when another crate in the build switches on the other provider too.
    #[cfg(all(feature = "ring", not(feature = "aws-lc-rs")))]
    let provider = Some(Arc::new(rustls::crypto::ring::default_provider()));
    #[cfg(not(any(feature = "ring", feature = "aws-lc-rs")))]
    let provider = CryptoProvider::get_default().cloned();
    provider.ok_or_else(|| {
        config_error(
            "tls",
            "no crypto provider: turn on the `ring` or `aws-lc-rs` feature, or install one \
             with rustls::crypto::CryptoProvider::install_default",
        )
    })
}

/// The process-wide default client, built once and shared (clones share its pool), with
/// [`HttpClientConfig::default`]: the proxy variables are read when it is first built, and a
/// refusal then (an unusable `HTTPS_PROXY`, no crypto provider) is the answer from then on.
pub fn shared_client() -> Result<HttpClient, ConfigError> {
    static CLIENT: OnceLock<Result<HttpClient, ConfigError>> = OnceLock::new();
    CLIENT
        .get_or_init(|| HttpClientConfig::default().build())
        .clone()
}

/// A JSON POST to `uri` with the provider's fixed `headers`.
/// A `POST` of a JSON `body` to `uri` with these headers (`accept: text/event-stream` added
/// when `stream`): the request most protocols send.
pub fn post_json(
    uri: &http::Uri,
    headers: &http::HeaderMap,
    body: Vec<u8>,
    stream: bool,
) -> http::Request<RequestBody> {
    let mut request = http::Request::new(RequestBody::new(Bytes::from(body)));
    *request.method_mut() = http::Method::POST;
    *request.uri_mut() = uri.clone();
    *request.headers_mut() = headers.clone();
    if stream {
        request.headers_mut().insert(
            http::header::ACCEPT,
            http::HeaderValue::from_static("text/event-stream"),
        );
    }
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(any(feature = "ring", feature = "aws-lc-rs"))]
    #[test]
    fn default_client_builds_and_bad_knobs_are_named() {
        assert!(HttpClientConfig::default().build().is_ok());
        let zero = HttpClientConfig {
            connect_timeout: Duration::ZERO,
            ..HttpClientConfig::default()
        };
        assert_eq!(
            zero.build().err().map(|e| e.knob().to_owned()),
            Some("connect_timeout".to_owned())
        );
    }

    #[cfg(not(any(feature = "webpki-roots", feature = "native-roots")))]
    #[test]
    fn without_root_features_a_client_needs_roots_of_its_own() {
        let refused = HttpClientConfig::default()
            .roots()
            .err()
            .map(|e| e.knob().to_owned());
        assert_eq!(refused, Some("root_certificate".to_owned()));
    }

    #[cfg(not(any(feature = "ring", feature = "aws-lc-rs")))]
    #[test]
    fn without_provider_features_and_no_process_default_the_build_is_refused() {
        // No test in this binary installs a process default.
        let refused = crypto_provider().err().map(|e| e.knob().to_owned());
        assert_eq!(refused, Some("tls".to_owned()));
    }

    #[test]
    fn roots_are_pem_bundles_or_der_and_the_bad_ones_are_named() {
        let mut roots = RootCertStore::empty();
        for (bad, why) in [
            (&b""[..], "empty"),
            (&b"junk"[..], "neither PEM nor"),
            (
                &b"-----BEGIN X-----\nAAAA\n-----END X-----\n"[..],
                "without a CERTIFICATE",
            ),
        ] {
            let error = add_root(&mut roots, bad).err().unwrap_or_default();
            assert!(error.contains(why), "{error}");
        }
        assert!(roots.is_empty());
    }
}
