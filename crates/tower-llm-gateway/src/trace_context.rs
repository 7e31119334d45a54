//! W3C trace context (`traceparent`, `tracestate`) from the client's request to the upstream's.
//!
//! Always on. A client's `traceparent` is checked by the W3C rules (version, lowercase hex
//! ids that are not all zeros, flags; a malformed one, or more than one, is dropped together
//! with its `tracestate`) and then made current for the request's task; the providers' HTTP
//! client is wrapped in [`PropagateTraceContext`], which writes it on every upstream request
//! made while the context is current: whole answers, streams (their request is sent at the
//! call, before the first chunk), every retry, fallback and hedge attempt. With the `otlp`
//! feature and trace export on, the gateway's own span is the client's child and the upstream
//! gets *its* context instead (see `telemetry`).
//!
//! The cost for a request without `traceparent` is one header lookup; with one, the values
//! are the request's own header bytes (shared, not copied) unless a `tracestate` has to be
//! joined or trimmed.

use std::task::{Context, Poll};

use axum::http::{HeaderMap, HeaderName, HeaderValue};

/// `traceparent`.
pub(crate) static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// `tracestate`.
pub(crate) static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The most list members a `tracestate` may have (W3C).
const MAX_TRACESTATE_MEMBERS: usize = 32;
/// The longest `tracestate` passed on; longer ones are trimmed the W3C way (members over
/// [`LONG_MEMBER`] bytes go first, then members from the end).
const MAX_TRACESTATE_BYTES: usize = 512;
const LONG_MEMBER: usize = 128;

/// A client's valid trace context, as it goes to the upstream.
#[derive(Clone, Debug)]
pub(crate) struct TraceContext {
    /// A version-00 `traceparent`.
    traceparent: HeaderValue,
    tracestate: Option<HeaderValue>,
}

tokio::task_local! {
    /// The client's context, current while its request is handled.
    static CLIENT: TraceContext;
}

impl TraceContext {
    /// The context in `headers`, if there is a valid one.
    pub(crate) fn from_headers(headers: &HeaderMap) -> Option<TraceContext> {
        let mut values = headers.get_all(&TRACEPARENT).iter();
        let value = values.next()?;
        if values.next().is_some() {
            return None;
        }
        let traceparent = parse_traceparent(value)?;
        Some(TraceContext {
            traceparent,
            tracestate: tracestate(headers),
        })
    }

    /// The `traceparent` passed on (always version 00).
    #[cfg(feature = "otlp")]
    pub(crate) fn traceparent(&self) -> &HeaderValue {
        &self.traceparent
    }

    /// The `tracestate` passed on, if the client sent a valid one.
    #[cfg(feature = "otlp")]
    pub(crate) fn tracestate(&self) -> Option<&HeaderValue> {
        self.tracestate.as_ref()
    }

    /// Writes this context on an outgoing request.
    fn write(&self, headers: &mut HeaderMap) {
        headers.insert(TRACEPARENT.clone(), self.traceparent.clone());
        match &self.tracestate {
            Some(state) => {
                headers.insert(TRACESTATE.clone(), state.clone());
            }
            None => {
                headers.remove(&TRACESTATE);
            }
        }
    }

    /// Runs `future` with this context current (for [`PropagateTraceContext`]).
    pub(crate) async fn scope<F: Future>(self, future: F) -> F::Output {
        CLIENT.scope(self, future).await
    }
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        _ => None,
    }
}

/// Lowercase hex digits only, and not all zeros.
fn is_id(bytes: &[u8]) -> bool {
    bytes.iter().all(|b| hex_value(*b).is_some()) && bytes.iter().any(|b| *b != b'0')
}

/// A valid `traceparent` as version 00: the value itself when it is version 00, the
/// version-00 fields of a later version otherwise (as W3C asks of a parser that meets a
/// version it does not know).
fn parse_traceparent(value: &HeaderValue) -> Option<HeaderValue> {
    let bytes = value.as_bytes();
    if bytes.len() < 55 {
        return None;
    }
    let version = hex_value(bytes[0])? << 4 | hex_value(bytes[1])?;
    let dashes = bytes[2] == b'-' && bytes[35] == b'-' && bytes[52] == b'-';
    let fields = is_id(&bytes[3..35])
        && is_id(&bytes[36..52])
        && hex_value(bytes[53]).is_some()
        && hex_value(bytes[54]).is_some();
    if version == 0xff || !dashes || !fields {
        return None;
    }
    match (version, bytes.len()) {
        (0, 55) => Some(value.clone()),
        (0, _) => None,
        (_, 55) => downgrade(bytes),
        (_, _) if bytes[55] == b'-' => downgrade(bytes),
        _ => None,
    }
}

fn downgrade(bytes: &[u8]) -> Option<HeaderValue> {
    let mut v00 = Vec::with_capacity(55);
    v00.extend_from_slice(b"00");
    v00.extend_from_slice(&bytes[2..55]);
    HeaderValue::from_bytes(&v00).ok()
}

/// The client's `tracestate` (several header lines are one list), if valid; trimmed to
/// [`MAX_TRACESTATE_BYTES`].
fn tracestate(headers: &HeaderMap) -> Option<HeaderValue> {
    let mut lines = headers.get_all(&TRACESTATE).iter();
    let first = lines.next()?;
    let Some(second) = lines.next() else {
        let text = first.to_str().ok()?;
        let members = members(text)?;
        if text.len() <= MAX_TRACESTATE_BYTES {
            return (!members.is_empty()).then(|| first.clone());
        }
        return trimmed(members);
    };
    let mut joined = String::new();
    for line in [first, second].into_iter().chain(lines) {
        let text = line.to_str().ok()?;
        if joined.len() + text.len() > 8 * 1024 {
            return None;
        }
        if !joined.is_empty() {
            joined.push(',');
        }
        joined.push_str(text);
    }
    trimmed(members(&joined)?)
}

/// A new value of `members`, trimmed to the limit.
fn trimmed(mut members: Vec<&str>) -> Option<HeaderValue> {
    let length = |members: &[&str]| {
        members.iter().map(|m| m.len()).sum::<usize>() + members.len().saturating_sub(1)
    };
    if length(&members) > MAX_TRACESTATE_BYTES {
        members.retain(|m| m.len() <= LONG_MEMBER);
    }
    while length(&members) > MAX_TRACESTATE_BYTES {
        members.pop();
    }
    if members.is_empty() {
        return None;
    }
    HeaderValue::from_str(&members.join(",")).ok()
}

/// The list members of a `tracestate`, or `None` when it is malformed (then it is dropped
/// whole, as W3C asks).
fn members(text: &str) -> Option<Vec<&str>> {
    let mut members: Vec<&str> = Vec::new();
    for member in text.split(',') {
        let member = member.trim_matches([' ', '\t']);
        if member.is_empty() {
            continue;
        }
        let (key, value) = member.split_once('=')?;
        if !is_key(key) || !is_value(value) {
            return None;
        }
        if members
            .iter()
            .any(|m| m.split_once('=').map(|(k, _)| k) == Some(key))
        {
            return None;
        }
        members.push(member);
        if members.len() > MAX_TRACESTATE_MEMBERS {
            return None;
        }
    }
    Some(members)
}

fn is_key(key: &str) -> bool {
    let bytes = key.as_bytes();
    let allowed = |b: &u8| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'*' | b'/');
    let part = |p: &[u8], max: usize| {
        !p.is_empty()
            && p.len() <= max
            && matches!(p[0], b'a'..=b'z' | b'0'..=b'9')
            && p.iter().all(allowed)
    };
    match key.split_once('@') {
        None => part(bytes, 256) && bytes[0].is_ascii_lowercase(),
        Some((tenant, system)) => {
            part(tenant.as_bytes(), 241)
                && part(system.as_bytes(), 14)
                && system.as_bytes()[0].is_ascii_lowercase()
        }
    }
}

fn is_value(value: &str) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 256
        && bytes.last() != Some(&b' ')
        && bytes
            .iter()
            .all(|b| (0x20..=0x7e).contains(b) && *b != b',' && *b != b'=')
}

/// Writes the current trace context on each request: the gateway's own span's when trace
/// export is on (`otlp`), else the client's, if it sent one. Wraps the providers' HTTP client.
#[derive(Clone, Debug)]
pub(crate) struct PropagateTraceContext<S> {
    inner: S,
}

impl<S> PropagateTraceContext<S> {
    pub(crate) fn new(inner: S) -> Self {
        PropagateTraceContext { inner }
    }
}

impl<S, B> tower::Service<http::Request<B>> for PropagateTraceContext<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> S::Future {
        write_current(request.headers_mut());
        self.inner.call(request)
    }
}

fn write_current(headers: &mut HeaderMap) {
    #[cfg(feature = "otlp")]
    if crate::telemetry::write_span_context(headers) {
        return;
    }
    let _ = CLIENT.try_with(|context| context.write(headers));
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn context(lines: &[(&HeaderName, &str)]) -> Option<TraceContext> {
        let mut headers = HeaderMap::new();
        for (name, value) in lines {
            headers.append((*name).clone(), HeaderValue::from_str(value).unwrap());
        }
        TraceContext::from_headers(&headers)
    }

    fn parent(value: &str) -> Option<String> {
        context(&[(&TRACEPARENT, value)]).map(|c| c.traceparent.to_str().unwrap().to_owned())
    }

    #[test]
    fn traceparent_follows_the_w3c_rules() {
        assert_eq!(parent(VALID).as_deref(), Some(VALID));
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            // Uppercase hex, zero ids, version ff, bad separators, trailing data on v00.
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(parent(bad), None, "{bad:?} accepted");
        }
        // A later version is read by its version-00 fields and passed on as version 00.
        assert_eq!(
            parent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-later")
                .as_deref(),
            Some(VALID)
        );
        assert_eq!(
            parent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x"),
            None
        );
        // Two traceparent lines: which one is meant is unknown.
        assert!(context(&[(&TRACEPARENT, VALID), (&TRACEPARENT, VALID)]).is_none());
    }

    #[test]
    fn tracestate_goes_with_a_valid_traceparent_only_and_is_checked() {
        let state = |value: &str| {
            context(&[(&TRACEPARENT, VALID), (&TRACESTATE, value)])
                .unwrap()
                .tracestate
                .map(|v| v.to_str().unwrap().to_owned())
        };
        assert_eq!(
            state("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE").as_deref(),
            Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE")
        );
        assert_eq!(state("tenant@vendor=x").as_deref(), Some("tenant@vendor=x"));
        for bad in ["novalue", "Upper=1", "a=1,a=2", "a=x=y", "=v", "a= "] {
            assert_eq!(state(bad), None, "{bad:?} accepted");
        }
        let many = (0..33)
            .map(|i| format!("k{i}=v"))
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(state(&many), None, "33 members accepted");
        // Several lines are one list.
        let joined = context(&[
            (&TRACEPARENT, VALID),
            (&TRACESTATE, "a=1"),
            (&TRACESTATE, "b=2"),
        ])
        .unwrap();
        assert_eq!(joined.tracestate.unwrap(), "a=1,b=2");
        // Too long: the long members go first, then members from the end.
        let long = format!("big={},a=1,b=2", "x".repeat(200));
        let padded = format!(
            "{long},{}",
            (0..4)
                .map(|i| format!("p{i}={}", "y".repeat(120)))
                .collect::<Vec<_>>()
                .join(",")
        );
        let trimmed = state(&padded).unwrap();
        assert!(trimmed.starts_with("a=1,b=2,p0="), "{trimmed}");
        assert!(trimmed.len() <= MAX_TRACESTATE_BYTES);
        // A malformed traceparent drops its tracestate too.
        assert!(context(&[(&TRACEPARENT, "junk"), (&TRACESTATE, "a=1")]).is_none());
    }

    #[tokio::test]
    async fn the_wrapped_client_writes_the_current_context_and_nothing_without_one() {
        use tower::{ServiceExt, service_fn};
        let echo = service_fn(|request: http::Request<()>| async move {
            Ok::<_, std::convert::Infallible>(request.headers().clone())
        });
        let client = PropagateTraceContext::new(echo);
        let seen = client
            .clone()
            .oneshot(http::Request::new(()))
            .await
            .unwrap();
        assert!(seen.get(&TRACEPARENT).is_none());

        let ctx = context(&[(&TRACEPARENT, VALID), (&TRACESTATE, "a=1")]).unwrap();
        let seen = ctx
            .scope(client.oneshot(http::Request::new(())))
            .await
            .unwrap();
        assert_eq!(seen[&TRACEPARENT], VALID);
        assert_eq!(seen[&TRACESTATE], "a=1");
    }
}
