//! The default client over real TLS and through real proxies, on loopback: a TLS server with a
//! certificate from a test CA (rcgen) that answers OpenAI-shaped chats over HTTP/2 or
//! HTTP/1.1 (by ALPN), an HTTP CONNECT proxy and a SOCKS5 proxy that count what they relay.
//! No test reads or sets the process's environment: proxies are given in code.

#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt;
use tower_llm_core::FailureKind;
use tower_llm_providers::{ChatRequest, HttpClientConfig, Message, OpenAi, ProxyConfig};

const ANSWER: &str = r#"{"id":"chatcmpl-tls","object":"chat.completion","model":"m",
    "choices":[{"index":0,"message":{"role":"assistant","content":"over TLS"},"finish_reason":"stop"}],
    "usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#;

/// A test CA and a server certificate it signed for `localhost` and `127.0.0.1`.
struct TestPki {
    ca_pem: String,
    ca_der: Vec<u8>,
    server_chain: Vec<CertificateDer<'static>>,
    server_key: PrivatePkcs8KeyDer<'static>,
}

fn pki() -> TestPki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "tower-llm test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&server_key, &issuer)
        .unwrap();
    TestPki {
        ca_pem: ca.pem(),
        ca_der: ca.der().to_vec(),
        server_chain: vec![server.der().clone()],
        server_key: PrivatePkcs8KeyDer::from(server_key.serialize_der()),
    }
}

/// A TLS server offering only `alpn`, answering every request with [`ANSWER`] and recording
/// each request's HTTP version.
struct TlsServer {
    addr: SocketAddr,
    versions: Arc<Mutex<Vec<http::Version>>>,
}

async fn tls_server(pki: &TestPki, alpn: &[u8]) -> TlsServer {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            pki.server_chain.clone(),
            PrivateKeyDer::Pkcs8(pki.server_key.clone_key()),
        )
        .unwrap();
    config.alpn_protocols = vec![alpn.to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let versions = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&versions);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                // A client that does not trust the certificate hangs up here.
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |request: http::Request<_>| {
                    seen.lock().unwrap().push(request.version());
                    async move {
                        Ok::<_, Infallible>(
                            http::Response::builder()
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from_static(ANSWER.as_bytes())))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    TlsServer { addr, versions }
}

fn openai(base_url: String, config: HttpClientConfig) -> OpenAi {
    OpenAi::compatible(base_url)
        .api_key("sk-test-key")
        .build_with(config.build().unwrap())
        .unwrap()
}

fn chat() -> ChatRequest {
    ChatRequest::new("m", vec![Message::user("hi")])
}

fn direct() -> HttpClientConfig {
    HttpClientConfig::default().proxy(ProxyConfig::none())
}

#[tokio::test]
async fn a_custom_root_makes_tls_work_over_http2() {
    let pki = pki();
    let server = tls_server(&pki, b"h2").await;
    let provider = openai(
        format!("https://127.0.0.1:{}/v1", server.addr.port()),
        direct().root_certificate(pki.ca_pem.clone()),
    );
    let answer = provider.oneshot(chat()).await.unwrap();
    assert_eq!(answer.content, "over TLS");
    assert_eq!(answer.meta.status, Some(http::StatusCode::OK));
    assert_eq!(*server.versions.lock().unwrap(), [http::Version::HTTP_2]);
}

#[tokio::test]
async fn a_custom_root_makes_tls_work_over_http1() {
    let pki = pki();
    let server = tls_server(&pki, b"http/1.1").await;
    // DER this time, and the host name rather than the address.
    let provider = openai(
        format!("https://localhost:{}/v1", server.addr.port()),
        direct().root_certificate(pki.ca_der.clone()),
    );
    let answer = provider.clone().oneshot(chat()).await.unwrap();
    assert_eq!(answer.content, "over TLS");
    provider.oneshot(chat()).await.unwrap();
    assert_eq!(
        *server.versions.lock().unwrap(),
        [http::Version::HTTP_11, http::Version::HTTP_11]
    );
}

#[tokio::test]
async fn without_the_root_the_certificate_is_refused_as_a_transport_error() {
    let pki = pki();
    let server = tls_server(&pki, b"h2").await;
    let provider = openai(
        format!("https://127.0.0.1:{}/v1", server.addr.port()),
        direct(),
    );
    let error = provider.oneshot(chat()).await.unwrap_err();
    assert_eq!(error.kind(), FailureKind::Transport);
    let text = error.to_string();
    assert!(text.contains("certificate"), "{text}");
    assert!(text.contains("UnknownIssuer"), "{text}");
    assert!(!text.contains("sk-test-key"), "{text}");
    assert!(server.versions.lock().unwrap().is_empty());
}

#[test]
fn a_root_that_does_not_parse_is_refused_when_built() {
    let pki = pki();
    for (bad, why) in [
        (Bytes::from_static(b"not a certificate"), "neither PEM nor"),
        (Bytes::new(), "empty"),
        (
            Bytes::from_static(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"),
            "without a CERTIFICATE",
        ),
        (
            Bytes::from(pki.ca_pem.replace("MII", "MIX")),
            "certificate 1",
        ),
    ] {
        let error = direct()
            .root_certificate(pki.ca_der.clone())
            .root_certificate(bad)
            .build()
            .err()
            .unwrap();
        assert_eq!(error.knob(), "root_certificate");
        assert!(error.to_string().contains(why), "{error}");
    }
    // A bundle of several certificates is fine.
    let bundle = format!("{}{}", pki.ca_pem, self::pki().ca_pem);
    assert!(direct().root_certificate(bundle).build().is_ok());
}

/// What a proxy was asked to do.
#[derive(Default)]
struct ProxyLog {
    /// The `CONNECT` targets (or SOCKS destinations), in order.
    targets: Vec<String>,
    /// The `Proxy-Authorization` headers (or SOCKS user:password), in order.
    auth: Vec<Option<String>>,
}

/// An HTTP CONNECT proxy: relays each tunnel to its target, or answers 407 when `require`
/// names credentials the request does not carry.
async fn connect_proxy(require: Option<&'static str>) -> (SocketAddr, Arc<Mutex<ProxyLog>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log = Arc::new(Mutex::new(ProxyLog::default()));
    let record = Arc::clone(&log);
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                return;
            };
            let record = Arc::clone(&record);
            tokio::spawn(async move {
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    let mut byte = [0u8; 1];
                    if client.read_exact(&mut byte).await.is_err() {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let mut lines = head.lines();
                let request = lines.next().unwrap_or_default();
                let target = request
                    .strip_prefix("CONNECT ")
                    .and_then(|rest| rest.split(' ').next())
                    .unwrap_or_default()
                    .to_owned();
                let auth = lines.find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("proxy-authorization")
                        .then(|| value.trim().to_owned())
                });
                {
                    let mut log = record.lock().unwrap();
                    log.targets.push(target.clone());
                    log.auth.push(auth.clone());
                }
                if require.is_some() && auth.as_deref() != require {
                    let _ = client
                        .write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n")
                        .await;
                    return;
                }
                let Ok(mut upstream) = TcpStream::connect(&target).await else {
                    let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                    return;
                };
                if client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await
                    .is_ok()
                {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                }
            });
        }
    });
    (addr, log)
}

#[tokio::test]
async fn https_goes_through_the_connect_proxy_with_its_credentials() {
    let pki = pki();
    let server = tls_server(&pki, b"h2").await;
    // "alice:s3cret" in Basic.
    let (proxy, log) = connect_proxy(Some("Basic YWxpY2U6czNjcmV0")).await;
    let provider = openai(
        format!("https://localhost:{}/v1", server.addr.port()),
        HttpClientConfig::default()
            .root_certificate(pki.ca_pem.clone())
            .proxy(ProxyConfig::url(format!("http://alice:s3cret@{proxy}"))),
    );
    for _ in 0..3 {
        let answer = provider.clone().oneshot(chat()).await.unwrap();
        assert_eq!(answer.content, "over TLS");
    }
    let log = log.lock().unwrap();
    // One tunnel, kept alive in the pool and multiplexed over HTTP/2.
    assert_eq!(log.targets, [format!("localhost:{}", server.addr.port())]);
    assert_eq!(log.auth, [Some("Basic YWxpY2U6czNjcmV0".to_owned())]);
    assert_eq!(server.versions.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn plain_http_tunnels_too_with_the_default_port_spelt_out() {
    let mock = tower_llm_testkit::MockServer::start(tower_llm_testkit::FaultPlan::healthy())
        .await
        .unwrap();
    let (proxy, log) = connect_proxy(None).await;
    let provider = openai(
        format!("{}/v1", mock.base_url()),
        HttpClientConfig::default().proxy(ProxyConfig::url(proxy.to_string())),
    );
    provider.oneshot(chat()).await.unwrap();
    assert_eq!(mock.counters().requests, 1);
    let port = mock.base_url().rsplit(':').next().unwrap().to_owned();
    assert_eq!(log.lock().unwrap().targets, [format!("127.0.0.1:{port}")]);
}

#[tokio::test]
async fn no_proxy_hosts_bypass_the_proxy() {
    let pki = pki();
    let server = tls_server(&pki, b"h2").await;
    let (proxy, log) = connect_proxy(None).await;
    let config = |no_proxy: &str| {
        HttpClientConfig::default()
            .root_certificate(pki.ca_pem.clone())
            .proxy(ProxyConfig::url(format!("http://{proxy}")).no_proxy(no_proxy))
    };
    let url = format!("https://localhost:{}/v1", server.addr.port());
    for no_proxy in ["localhost", "example.com, .localhost", "*"] {
        let answer = openai(url.clone(), config(no_proxy))
            .oneshot(chat())
            .await
            .unwrap();
        assert_eq!(answer.content, "over TLS");
    }
    assert!(log.lock().unwrap().targets.is_empty());
    // A list that does not name the host leaves it proxied.
    openai(url, config("example.com"))
        .oneshot(chat())
        .await
        .unwrap();
    assert_eq!(log.lock().unwrap().targets.len(), 1);
}

#[tokio::test]
async fn a_proxy_refusal_is_a_transport_error_that_names_the_proxy_not_its_password() {
    let pki = pki();
    let server = tls_server(&pki, b"h2").await;
    let (proxy, log) = connect_proxy(Some("Basic c29tZW9uZTplbHNl")).await;
    let provider = openai(
        format!("https://localhost:{}/v1", server.addr.port()),
        HttpClientConfig::default()
            .root_certificate(pki.ca_pem.clone())
            .proxy(ProxyConfig::url(format!("http://alice:s3cret@{proxy}"))),
    );
    let error = provider.oneshot(chat()).await.unwrap_err();
    assert_eq!(error.kind(), FailureKind::Transport);
    let text = format!("{error} {error:?}");
    assert!(
        text.contains(&format!("through the proxy http://{proxy}")),
        "{text}"
    );
    assert!(text.contains("proxy authorization required"), "{text}");
    assert!(
        !text.contains("s3cret") && !text.contains("alice"),
        "{text}"
    );
    assert_eq!(log.lock().unwrap().targets.len(), 1);
    assert!(server.versions.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_proxy_that_accepts_and_says_nothing_times_out_as_connecting() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = listener.local_addr().unwrap();
    let held = Arc::new(Mutex::new(Vec::new()));
    let hold = Arc::clone(&held);
    tokio::spawn(async move {
        while let Ok((connection, _)) = listener.accept().await {
            hold.lock().unwrap().push(connection);
        }
    });
    let mut config = HttpClientConfig::default().proxy(ProxyConfig::url(format!("http://{proxy}")));
    // Real time (a loopback connection and a paused clock do not mix), and never asserted.
    config.connect_timeout = std::time::Duration::from_millis(50);
    let error = openai("https://api.example.test/v1".to_owned(), config)
        .oneshot(chat())
        .await
        .unwrap_err();
    assert_eq!(error.kind(), FailureKind::Timeout, "{error}");
    assert!(
        error
            .to_string()
            .contains(&format!("through the proxy http://{proxy}")),
        "{error}"
    );
    assert_eq!(held.lock().unwrap().len(), 1);
}

/// A SOCKS5 proxy (RFC 1928, with RFC 1929 user/password when offered) that relays to the
/// requested address and logs it.
async fn socks5_proxy() -> (SocketAddr, Arc<Mutex<ProxyLog>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log = Arc::new(Mutex::new(ProxyLog::default()));
    let record = Arc::clone(&log);
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let record = Arc::clone(&record);
            tokio::spawn(async move {
                let _ = socks5_session(&mut client, &record).await;
            });
        }
    });
    (addr, log)
}

async fn socks5_session(client: &mut TcpStream, record: &Mutex<ProxyLog>) -> std::io::Result<()> {
    let mut greeting = [0u8; 2];
    client.read_exact(&mut greeting).await?;
    let mut methods = vec![0u8; usize::from(greeting[1])];
    client.read_exact(&mut methods).await?;
    let mut auth = None;
    if methods.contains(&2) {
        client.write_all(&[5, 2]).await?;
        let mut version_and_len = [0u8; 2];
        client.read_exact(&mut version_and_len).await?;
        let mut user = vec![0u8; usize::from(version_and_len[1])];
        client.read_exact(&mut user).await?;
        let mut pass_len = [0u8; 1];
        client.read_exact(&mut pass_len).await?;
        let mut pass = vec![0u8; usize::from(pass_len[0])];
        client.read_exact(&mut pass).await?;
        auth = Some(format!(
            "{}:{}",
            String::from_utf8_lossy(&user),
            String::from_utf8_lossy(&pass)
        ));
        client.write_all(&[1, 0]).await?;
    } else {
        client.write_all(&[5, 0]).await?;
    }
    let mut request = [0u8; 4];
    client.read_exact(&mut request).await?;
    let host = match request[3] {
        1 => {
            let mut ip = [0u8; 4];
            client.read_exact(&mut ip).await?;
            std::net::Ipv4Addr::from(ip).to_string()
        }
        3 => {
            let mut len = [0u8; 1];
            client.read_exact(&mut len).await?;
            let mut name = vec![0u8; usize::from(len[0])];
            client.read_exact(&mut name).await?;
            String::from_utf8_lossy(&name).into_owned()
        }
        4 => {
            let mut ip = [0u8; 16];
            client.read_exact(&mut ip).await?;
            format!("[{}]", std::net::Ipv6Addr::from(ip))
        }
        _ => return Ok(()),
    };
    let mut port = [0u8; 2];
    client.read_exact(&mut port).await?;
    let target = format!("{host}:{}", u16::from_be_bytes(port));
    {
        let mut log = record.lock().unwrap();
        log.targets.push(target.clone());
        log.auth.push(auth);
    }
    // The test servers listen on 127.0.0.1 only: `localhost` resolved to ::1 means them too.
    let relay_to = target.replace("[::1]", "127.0.0.1");
    let mut upstream = TcpStream::connect(&relay_to).await?;
    client.write_all(&[5, 0, 0, 1, 0, 0, 0, 0, 0, 0]).await?;
    tokio::io::copy_bidirectional(client, &mut upstream).await?;
    Ok(())
}

#[tokio::test]
async fn socks5h_sends_the_name_and_socks5_resolves_it_here() {
    let pki = pki();
    let server = tls_server(&pki, b"h2").await;
    let (proxy, log) = socks5_proxy().await;
    let url = format!("https://localhost:{}/v1", server.addr.port());
    for scheme in ["socks5h", "socks5"] {
        let answer = openai(
            url.clone(),
            HttpClientConfig::default()
                .root_certificate(pki.ca_pem.clone())
                .proxy(ProxyConfig::url(format!("{scheme}://bob:pw@{proxy}"))),
        )
        .oneshot(chat())
        .await
        .unwrap();
        assert_eq!(answer.content, "over TLS");
    }
    let log = log.lock().unwrap();
    let port = server.addr.port();
    assert_eq!(log.targets[0], format!("localhost:{port}"));
    // Resolved here: an address, whichever of localhost's the resolver gave first.
    assert_ne!(log.targets[1], format!("localhost:{port}"));
    assert_eq!(
        log.auth,
        [Some("bob:pw".to_owned()), Some("bob:pw".to_owned())]
    );
}
