//! The default HTTP client: hyper-util's pooled client over rustls.

use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::error::ConfigError;

/// The request body every provider sends: one JSON buffer.
pub type RequestBody = Full<Bytes>;

/// The default inner service of every provider: hyper-util's legacy client with rustls
/// (webpki roots, ring), HTTP/1.1 and HTTP/2 by ALPN, a keep-alive connection pool and a
/// connect timeout. Plain `http://` is allowed too, for local OpenAI-compatible servers.
pub type HttpClient = Client<HttpsConnector<HttpConnector>, RequestBody>;

/// The stream a provider over the default [`HttpClient`] answers a
/// [`Streaming`](crate::Streaming) request with, for naming it in a stack's type.
pub type HttpChatStream = crate::ChatStream<hyper::body::Incoming>;

/// Settings of the default [`HttpClient`].
#[derive(Clone, Debug)]
pub struct HttpClientConfig {
    /// How long to wait for a TCP connection (default 10 s).
    pub connect_timeout: Duration,
    /// How long an idle pooled connection is kept (default 90 s); a century or more means
    /// for as long as the server keeps it open.
    pub pool_idle_timeout: Duration,
    /// The most idle connections kept per host (default 32).
    pub pool_max_idle_per_host: usize,
    /// TCP keep-alive probes on pooled connections (default 60 s).
    pub tcp_keepalive: Option<Duration>,
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
        }
    }
}

impl HttpClientConfig {
    /// Builds a client with these settings.
    pub fn build(&self) -> Result<HttpClient, ConfigError> {
        if self.connect_timeout.is_zero() {
            return Err(ConfigError::new("connect_timeout", "must be above zero"));
        }
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(self.connect_timeout));
        http.set_nodelay(true);
        http.set_keepalive(self.tcp_keepalive);
        // ring, named explicitly: rustls' process-wide default is ambiguous (and panics) when
        // another crate in the build switches on aws-lc-rs too.
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
            .map_err(|e| ConfigError::new("tls", e.to_string()))?
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(http);
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
}

/// The process-wide default client, built once and shared (clones share its pool).
pub fn shared_client() -> Result<HttpClient, ConfigError> {
    static CLIENT: OnceLock<Result<HttpClient, ConfigError>> = OnceLock::new();
    CLIENT
        .get_or_init(|| HttpClientConfig::default().build())
        .clone()
}

/// A JSON POST to `uri` with the provider's fixed `headers`.
pub(crate) fn post_json(
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

    #[test]
    fn default_client_builds_and_bad_knobs_are_named() {
        assert!(HttpClientConfig::default().build().is_ok());
        let zero = HttpClientConfig {
            connect_timeout: Duration::ZERO,
            ..HttpClientConfig::default()
        };
        assert_eq!(
            zero.build().err().map(|e| e.knob()),
            Some("connect_timeout")
        );
    }
}
