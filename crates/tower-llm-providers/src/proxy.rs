//! Proxies of the default client: `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY`
//! from the environment, or a proxy set in code.
//!
//! A connection to an `https://` or `http://` destination that a proxy intercepts is a tunnel:
//! an HTTP `CONNECT host:port` to an `http://` proxy, with `Proxy-Authorization: Basic` when
//! the proxy URL carries a user and password, then TLS (or plain HTTP) to the destination
//! inside it. `socks5://` (names resolved here) and `socks5h://` (names resolved by the proxy)
//! proxies are supported too. TLS to the proxy itself (`https://` proxy URLs) is not: such a
//! proxy is refused when the client is built.
//!
//! `NO_PROXY` follows curl: comma-separated host names (each matching itself and its
//! subdomains; a leading dot is allowed), IP addresses, CIDR networks, and `*` for every host.
//!
//! Proxy URLs may hold credentials: they are never printed (`Debug` and errors show the
//! proxy's scheme, host and port only).

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::proxy::{SocksV5, Tunnel};
use hyper_util::client::proxy::matcher::{Intercept, Matcher};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower_llm_core::BoxError;
use tower_service::Service;

use crate::error::{ConfigError, config_error};

/// Which proxy the default client's connections go through.
///
/// The default, [`ProxyConfig::from_env`], reads the environment once, when the client is
/// built; [`ProxyConfig::none`] connects directly whatever the environment says, and
/// [`ProxyConfig::url`] names the proxy in code.
///
/// ```
/// use tower_llm_providers::{HttpClientConfig, ProxyConfig};
///
/// let config = HttpClientConfig::default()
///     .proxy(ProxyConfig::url("http://user:secret@proxy.corp:3128").no_proxy("localhost,.corp"));
/// assert!(!format!("{config:?}").contains("secret"));
/// # #[cfg(any(feature = "ring", feature = "aws-lc-rs"))]
/// assert!(config.build().is_ok());
/// ```
#[derive(Clone, Default)]
pub struct ProxyConfig {
    source: Source,
}

#[derive(Clone, Default)]
enum Source {
    #[default]
    Env,
    Off,
    Given {
        url: String,
        no_proxy: String,
    },
}

impl ProxyConfig {
    /// The proxies the environment names (the default): `HTTPS_PROXY` for `https://`
    /// destinations, `HTTP_PROXY` for `http://` ones, `ALL_PROXY` for either when its own is
    /// unset, and `NO_PROXY` for hosts to reach directly; each also in lower case, the upper
    /// case winning. Unset or empty variables mean no proxy. Inside a CGI program
    /// (`REQUEST_METHOD` set) the environment is ignored, since a request's `Proxy:` header
    /// would arrive there as `HTTP_PROXY` ("httpoxy").
    pub fn from_env() -> Self {
        ProxyConfig {
            source: Source::Env,
        }
    }

    /// No proxy, whatever the environment says.
    pub fn none() -> Self {
        ProxyConfig {
            source: Source::Off,
        }
    }

    /// Every connection through the proxy at `url` (`http://[user:password@]host:port`,
    /// `socks5://...` or `socks5h://...`; a URL without a scheme is taken as `http://`),
    /// except to the hosts of [`no_proxy`](Self::no_proxy).
    pub fn url(url: impl Into<String>) -> Self {
        ProxyConfig {
            source: Source::Given {
                url: url.into(),
                no_proxy: String::new(),
            },
        }
    }

    /// Hosts reached directly, in `NO_PROXY`'s syntax (see the [module docs](crate::proxy)).
    /// Only for a proxy set with [`url`](Self::url): an environment's proxy takes the
    /// environment's `NO_PROXY`.
    pub fn no_proxy(mut self, hosts: impl Into<String>) -> Self {
        if let Source::Given { no_proxy, .. } = &mut self.source {
            *no_proxy = hosts.into();
        }
        self
    }

    /// The matcher these settings make, reading the environment now for
    /// [`from_env`](Self::from_env); `None` when no connection goes through a proxy.
    pub(crate) fn matcher(&self) -> Result<Option<Arc<Matcher>>, ConfigError> {
        match &self.source {
            Source::Off => Ok(None),
            Source::Env => matcher_from_vars(|name| std::env::var(name).ok()),
            Source::Given { url, no_proxy } => {
                check_proxy_url(url, "the proxy URL")?;
                let matcher = Matcher::builder()
                    .all(url.clone())
                    .no(no_proxy.clone())
                    .build();
                Ok(Some(Arc::new(matcher)))
            }
        }
    }
}

impl fmt::Debug for ProxyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Source::Env => f.write_str("ProxyConfig::FromEnv"),
            Source::Off => f.write_str("ProxyConfig::None"),
            Source::Given { url, no_proxy } => f
                .debug_struct("ProxyConfig")
                .field("url", &Redacted(url))
                .field("no_proxy", no_proxy)
                .finish(),
        }
    }
}

/// A proxy URL without its credentials, path or query: what may be shown.
struct Redacted<'a>(&'a str);

impl fmt::Display for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Ok(uri) = self.0.parse::<Uri>() else {
            return f.write_str("<not a URL>");
        };
        let scheme = uri.scheme_str().unwrap_or("http");
        match (uri.host(), uri.port_u16()) {
            (Some(host), Some(port)) => write!(f, "{scheme}://{host}:{port}"),
            (Some(host), None) => write!(f, "{scheme}://{host}"),
            _ => f.write_str("<no host>"),
        }
    }
}

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// The first of `names` that is set, per `lookup`, with its value.
fn first_set<'n>(
    lookup: &impl Fn(&str) -> Option<String>,
    names: &[&'n str],
) -> Option<(&'n str, String)> {
    names
        .iter()
        .find_map(|name| lookup(name).map(|value| (*name, value)))
}

/// The matcher the variables `lookup` reads name: `from_env` with the environment as a
/// function, so that its rules are tested without touching the process's environment.
fn matcher_from_vars(
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Option<Arc<Matcher>>, ConfigError> {
    if lookup("REQUEST_METHOD").is_some() {
        return Ok(None);
    }
    let mut builder = Matcher::builder();
    let mut any = false;
    for names in [
        &["HTTPS_PROXY", "https_proxy"][..],
        &["HTTP_PROXY", "http_proxy"],
        &["ALL_PROXY", "all_proxy"],
    ] {
        let Some((name, url)) = first_set(&lookup, names) else {
            continue;
        };
        if url.trim().is_empty() {
            continue;
        }
        check_proxy_url(&url, name)?;
        any = true;
        builder = match names[0] {
            "HTTPS_PROXY" => builder.https(url),
            "HTTP_PROXY" => builder.http(url),
            _ => builder.all(url),
        };
    }
    if !any {
        return Ok(None);
    }
    if let Some((_, hosts)) = first_set(&lookup, &["NO_PROXY", "no_proxy"]) {
        builder = builder.no(hosts);
    }
    Ok(Some(Arc::new(builder.build())))
}

/// Refuses a proxy URL the connector could not use, naming where it came from (`what`) but
/// never quoting it: it may hold a password.
fn check_proxy_url(url: &str, what: &str) -> Result<(), ConfigError> {
    let refuse = |why: &str| Err(config_error("proxy", format!("{what} {why}")));
    let Ok(uri) = url.trim().parse::<Uri>() else {
        return refuse("is not a URL");
    };
    if uri.host().is_none_or(str::is_empty) {
        return refuse("has no host");
    }
    match uri.scheme_str() {
        None | Some("http") | Some("socks5") | Some("socks5h") => Ok(()),
        Some("https") => refuse("is an https:// proxy: TLS to the proxy is not supported"),
        Some(_) => refuse("has a scheme other than http://, socks5:// or socks5h://"),
    }
}

/// The TCP connector under the default client's TLS: straight to the destination, or
/// through the proxy its [`ProxyConfig`] picks for that destination.
#[derive(Clone)]
pub struct ProxyConnector {
    direct: HttpConnector,
    proxy: Option<Arc<Matcher>>,
    /// The most a connection through a proxy may take, handshake included: a proxy that
    /// accepts and then says nothing must not hold a connection attempt forever.
    timeout: Duration,
}

impl ProxyConnector {
    pub(crate) fn new(
        direct: HttpConnector,
        proxy: Option<Arc<Matcher>>,
        timeout: Duration,
    ) -> Self {
        ProxyConnector {
            direct,
            proxy,
            timeout,
        }
    }
}

impl fmt::Debug for ProxyConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyConnector")
            .field("proxied", &self.proxy.is_some())
            .finish_non_exhaustive()
    }
}

/// Connecting, directly or through a proxy (boxed: once per new connection, not per call).
pub type Connecting =
    Pin<Box<dyn Future<Output = Result<TokioIo<TcpStream>, BoxError>> + Send + 'static>>;

impl Service<Uri> for ProxyConnector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Connecting;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.direct.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let Some(intercept) = self.proxy.as_ref().and_then(|m| m.intercept(&dst)) else {
            let connecting = self.direct.call(dst);
            return Box::pin(async move { connecting.await.map_err(Into::into) });
        };
        let direct = self.direct.clone();
        let timeout = self.timeout;
        Box::pin(async move {
            let connecting = through(intercept.clone(), direct, dst);
            let result = match tokio::time::timeout(timeout, connecting).await {
                Ok(result) => result,
                Err(elapsed) => Err(BoxError::from(elapsed)),
            };
            result.map_err(|source| {
                BoxError::from(ProxyError {
                    proxy: proxy_label(&intercept),
                    source,
                })
            })
        })
    }
}

/// The proxy's scheme, host and port, for errors.
fn proxy_label(intercept: &Intercept) -> String {
    Redacted(&intercept.uri().to_string()).to_string()
}

async fn through(
    intercept: Intercept,
    direct: HttpConnector,
    dst: Uri,
) -> Result<TokioIo<TcpStream>, BoxError> {
    let proxy = intercept.uri().clone();
    match proxy.scheme_str() {
        Some("socks5") | Some("socks5h") => {
            let mut socks =
                SocksV5::new(proxy.clone(), direct).local_dns(proxy.scheme_str() == Some("socks5"));
            if let Some((user, password)) = intercept.raw_auth() {
                socks = socks.with_auth(user.to_owned(), password.to_owned());
            }
            ready_and_call(socks, with_port(dst)?).await
        }
        _ => {
            let mut tunnel = Tunnel::new(proxy, direct);
            if let Some(auth) = intercept.basic_auth() {
                tunnel = tunnel.with_auth(auth.clone());
            }
            ready_and_call(tunnel, with_port(dst)?).await
        }
    }
}

async fn ready_and_call<S>(mut service: S, dst: Uri) -> Result<S::Response, BoxError>
where
    S: Service<Uri>,
    S::Error: Into<BoxError>,
{
    std::future::poll_fn(|cx| service.poll_ready(cx))
        .await
        .map_err(Into::into)?;
    service.call(dst).await.map_err(Into::into)
}

/// `dst` with its scheme's port spelt out: hyper-util's tunnel and SOCKS connectors assume
/// 443 when the URL names none, which is wrong for `http://`.
fn with_port(dst: Uri) -> Result<Uri, BoxError> {
    if dst.port().is_some() {
        return Ok(dst);
    }
    let port = match dst.scheme_str() {
        Some("http") => 80,
        _ => 443,
    };
    let host = dst.host().ok_or("the destination has no host")?;
    let authority = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let mut parts = dst.into_parts();
    parts.authority = Some(authority.parse()?);
    Ok(Uri::from_parts(parts)?)
}

/// A connection through a proxy failed; says which proxy (never its credentials).
#[derive(Debug)]
struct ProxyError {
    proxy: String,
    source: BoxError,
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "through the proxy {}", self.proxy)
    }
}

impl StdError for ProxyError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&*self.source)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| map.get(name).cloned()
    }

    fn proxy_for(matcher: &Option<Arc<Matcher>>, dst: &str) -> Option<String> {
        let dst: Uri = dst.parse().ok()?;
        matcher
            .as_ref()?
            .intercept(&dst)
            .map(|i| i.uri().to_string())
    }

    #[test]
    fn each_scheme_takes_its_own_variable_and_all_proxy_fills_in() {
        let m = matcher_from_vars(vars(&[
            ("HTTPS_PROXY", "http://secure:3128"),
            ("http_proxy", "http://plain:3128"),
        ]))
        .unwrap();
        assert_eq!(
            proxy_for(&m, "https://api.openai.com/v1").as_deref(),
            Some("http://secure:3128/")
        );
        assert_eq!(
            proxy_for(&m, "http://example.com/").as_deref(),
            Some("http://plain:3128/")
        );
        let all = matcher_from_vars(vars(&[("all_proxy", "socks5h://tor:9050")])).unwrap();
        assert_eq!(
            proxy_for(&all, "https://api.openai.com/").as_deref(),
            Some("socks5h://tor:9050/")
        );
    }

    #[test]
    fn upper_case_wins_and_empty_means_unset() {
        let m = matcher_from_vars(vars(&[
            ("HTTPS_PROXY", "http://upper:1"),
            ("https_proxy", "http://lower:1"),
        ]))
        .unwrap();
        assert_eq!(
            proxy_for(&m, "https://x.test/").as_deref(),
            Some("http://upper:1/")
        );
        assert!(
            matcher_from_vars(vars(&[("HTTPS_PROXY", "  ")]))
                .unwrap()
                .is_none()
        );
        assert!(matcher_from_vars(vars(&[])).unwrap().is_none());
    }

    #[test]
    fn no_proxy_matches_hosts_subdomains_networks_and_star() {
        let m = matcher_from_vars(vars(&[
            ("HTTPS_PROXY", "http://p:3128"),
            (
                "NO_PROXY",
                "localhost, .internal.corp,10.0.0.0/8, 192.168.1.7",
            ),
        ]))
        .unwrap();
        for direct in [
            "https://localhost:8443/",
            "https://api.internal.corp/",
            "https://internal.corp/",
            "https://10.2.3.4/",
            "https://192.168.1.7/",
        ] {
            assert_eq!(proxy_for(&m, direct), None, "{direct}");
        }
        for proxied in [
            "https://api.openai.com/",
            "https://notinternal.corp/",
            "https://192.168.1.8/",
        ] {
            assert!(proxy_for(&m, proxied).is_some(), "{proxied}");
        }
        let star = matcher_from_vars(vars(&[("HTTPS_PROXY", "http://p:3128"), ("no_proxy", "*")]))
            .unwrap();
        assert_eq!(proxy_for(&star, "https://api.openai.com/"), None);
    }

    #[test]
    fn cgi_programs_ignore_the_environment() {
        let m = matcher_from_vars(vars(&[
            ("REQUEST_METHOD", "GET"),
            ("HTTP_PROXY", "http://attacker:80"),
        ]))
        .unwrap();
        assert!(m.is_none());
    }

    #[test]
    fn a_bad_proxy_variable_is_named_but_not_quoted() {
        for (value, why) in [
            ("https://user:hunter2@proxy:443", "https://"),
            ("ftp://user:hunter2@proxy:21", "scheme"),
            ("http://user:hunter2@", "not a URL"),
        ] {
            let error = matcher_from_vars(vars(&[("HTTPS_PROXY", value)]))
                .err()
                .map(|e| (e.knob().to_owned(), e.to_string()));
            let Some((knob, text)) = error else {
                panic!("{value} was accepted");
            };
            assert_eq!(knob, "proxy");
            assert!(text.contains("HTTPS_PROXY") && text.contains(why), "{text}");
            assert!(!text.contains("hunter2"), "{text}");
        }
    }

    #[test]
    fn credentials_never_show() {
        let config = ProxyConfig::url("http://alice:hunter2@proxy.corp:3128").no_proxy("x");
        let shown = format!("{config:?}");
        assert!(shown.contains("http://proxy.corp:3128"), "{shown}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("alice"),
            "{shown}"
        );
        let matcher = config.matcher().unwrap();
        let intercept = matcher
            .as_ref()
            .and_then(|m| m.intercept(&Uri::from_static("https://api.openai.com/")))
            .unwrap();
        assert!(intercept.basic_auth().is_some());
        assert!(!proxy_label(&intercept).contains("hunter2"));
        let connector = ProxyConnector::new(HttpConnector::new(), matcher, Duration::from_secs(1));
        assert!(!format!("{connector:?}").contains("hunter2"));
    }

    #[test]
    fn given_proxies_skip_their_no_proxy_hosts_and_none_is_direct() {
        let m = ProxyConfig::url("proxy.corp:3128")
            .no_proxy("localhost,127.0.0.1")
            .matcher()
            .unwrap();
        assert_eq!(
            proxy_for(&m, "https://api.anthropic.com/").as_deref(),
            Some("http://proxy.corp:3128/")
        );
        assert_eq!(proxy_for(&m, "http://127.0.0.1:11434/"), None);
        assert!(ProxyConfig::none().matcher().unwrap().is_none());
    }

    #[test]
    fn tunnels_name_the_default_port() {
        let with = |s: &str| with_port(s.parse().unwrap()).unwrap().to_string();
        assert_eq!(with("http://h/v1"), "http://h:80/v1");
        assert_eq!(with("https://h/v1"), "https://h:443/v1");
        assert_eq!(with("https://h:8443/v1"), "https://h:8443/v1");
        assert_eq!(with("https://[::1]/v1"), "https://[::1]:443/v1");
    }
}
