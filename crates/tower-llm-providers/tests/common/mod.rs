//! A scripted stand-in for the network: responses whose bodies arrive in chosen pieces, fail
//! mid-way or stall (on tokio's clock), and a record of the requests sent.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use tokio::time::Sleep;
use tower::util::BoxCloneService;
use tower::{Service, ServiceExt};
use tower_llm_providers::RequestBody;

#[derive(Clone, Debug)]
pub enum Piece {
    Data(Bytes),
    /// The connection resets.
    Fail,
    /// Nothing arrives for this long.
    Stall(Duration),
}

#[derive(Debug)]
pub struct ScriptBody {
    pieces: VecDeque<Piece>,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl ScriptBody {
    pub fn new(pieces: Vec<Piece>) -> Self {
        ScriptBody {
            pieces: pieces.into(),
            sleep: None,
        }
    }
}

impl Body for ScriptBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        loop {
            match self.pieces.front().cloned() {
                None => return Poll::Ready(None),
                Some(Piece::Data(bytes)) => {
                    self.pieces.pop_front();
                    return Poll::Ready(Some(Ok(Frame::data(bytes))));
                }
                Some(Piece::Fail) => {
                    self.pieces.pop_front();
                    return Poll::Ready(Some(Err(std::io::Error::from(
                        std::io::ErrorKind::ConnectionReset,
                    ))));
                }
                Some(Piece::Stall(d)) => {
                    let sleep = self
                        .sleep
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(d)));
                    match sleep.as_mut().poll(cx) {
                        Poll::Ready(()) => {
                            self.sleep = None;
                            self.pieces.pop_front();
                        }
                        Poll::Pending => return Poll::Pending,
                    }
                }
            }
        }
    }
}

/// Cuts `bytes` at each of `cuts` (sorted, clamped).
pub fn split(bytes: &[u8], cuts: &[usize]) -> Vec<Piece> {
    let mut cuts: Vec<usize> = cuts.iter().map(|&c| c.min(bytes.len())).collect();
    cuts.sort_unstable();
    let mut pieces = Vec::new();
    let mut start = 0;
    for cut in cuts {
        pieces.push(Piece::Data(Bytes::copy_from_slice(&bytes[start..cut])));
        start = cut;
    }
    pieces.push(Piece::Data(Bytes::copy_from_slice(&bytes[start..])));
    pieces
}

/// One byte per piece.
pub fn bytewise(bytes: &[u8]) -> Vec<Piece> {
    bytes
        .iter()
        .map(|b| Piece::Data(Bytes::copy_from_slice(&[*b])))
        .collect()
}

/// The ways the stream tests deliver one body, each with a label for failure messages: whole,
/// one byte per piece, and in two pieces at every position (inside `"\n\n"`, `data:`, a
/// multi-byte character).
#[allow(dead_code)] // Not every test file streams.
pub fn deliveries(bytes: &[u8]) -> Vec<(String, Vec<Piece>)> {
    let mut all = vec![
        ("whole".to_owned(), split(bytes, &[])),
        ("byte by byte".to_owned(), bytewise(bytes)),
    ];
    all.extend((0..bytes.len()).map(|cut| (format!("cut at {cut}"), split(bytes, &[cut]))));
    all
}

#[derive(Clone, Debug)]
pub struct Sent {
    pub uri: String,
    pub headers: http::HeaderMap,
    pub body: serde_json::Value,
}

#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub pieces: Vec<Piece>,
}

impl Reply {
    pub fn json(status: u16, body: &str) -> Self {
        Reply {
            status,
            headers: vec![("content-type", "application/json".into())],
            pieces: vec![Piece::Data(Bytes::copy_from_slice(body.as_bytes()))],
        }
    }

    pub fn sse(pieces: Vec<Piece>) -> Self {
        Reply {
            status: 200,
            headers: vec![("content-type", "text/event-stream".into())],
            pieces,
        }
    }

    pub fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}

pub type MockClient =
    BoxCloneService<http::Request<RequestBody>, http::Response<ScriptBody>, Infallible>;

/// A client answering every request with `reply`, recording what was sent.
pub fn mock(reply: Reply) -> (MockClient, Arc<Mutex<Vec<Sent>>>) {
    let sent = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&sent);
    let service = tower::service_fn(move |request: http::Request<RequestBody>| {
        let reply = reply.clone();
        let record = Arc::clone(&record);
        async move {
            let (parts, body) = request.into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            record.lock().unwrap().push(Sent {
                uri: parts.uri.to_string(),
                headers: parts.headers,
                body: serde_json::from_slice(&body).unwrap(),
            });
            let mut response = http::Response::new(ScriptBody::new(reply.pieces));
            *response.status_mut() = http::StatusCode::from_u16(reply.status).unwrap();
            for (name, value) in reply.headers {
                response
                    .headers_mut()
                    .insert(name, http::HeaderValue::from_str(&value).unwrap());
            }
            Ok::<_, Infallible>(response)
        }
    });
    (BoxCloneService::new(service), sent)
}

/// Calls `service` once.
pub async fn call<S, R>(service: &mut S, request: R) -> Result<S::Response, S::Error>
where
    S: Service<R>,
{
    service.ready().await?.call(request).await
}

/// Drains a stream into its items.
pub async fn drain<St>(stream: St) -> Vec<St::Item>
where
    St: futures_core::Stream,
{
    use futures_util::StreamExt;
    stream.collect().await
}
