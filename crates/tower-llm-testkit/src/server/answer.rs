//! Writing an answer as the decision says: normal, spoilt by a fault, or refused, with the
//! headers every answer carries.

use std::io;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use bytes::Bytes;
use futures_util::stream;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use serde_json::{Value, json};

use super::STALL;
use super::routes::Call;
use super::state::{Decision, InFlight, Verdict};
use crate::duration_format;
use crate::plan::{Fault, RetryAfterForm, Route, StreamError};
use crate::quota::LimitState;
use crate::responses::{self, ErrorCase, Event, Framing, Prompt, Provider, Reply, StreamAnswer};

pub(super) enum Answer {
    Full(Response<Body>),
    Stream {
        status: StatusCode,
        content_type: &'static str,
        events: Vec<Bytes>,
        end: StreamEnd,
    },
    Drop,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum StreamEnd {
    Finish,
    Stall,
    Cut,
}

/// The answer to `call` as `decision` says, with the tokens it used (prompt and reply) when
/// the upstream wrote a reply: what a provider's own counter charges.
pub(super) fn answer(call: &Call, decision: &Decision) -> (Answer, Option<u64>) {
    let mut used = None;
    let answer = respond(call, decision, &mut used);
    (answer, used)
}

fn respond(call: &Call, decision: &Decision, used: &mut Option<u64>) -> Answer {
    let fault = match &decision.verdict {
        Verdict::Normal => None,
        Verdict::Unauthorized(echo) => {
            let case = ErrorCase::Status(StatusCode::UNAUTHORIZED);
            let (status, mut body) = responses::error_body(call.provider, case);
            // Bedrock's message is at the top level, the others' under `error`.
            let pointer = if call.provider == Provider::Bedrock {
                "/message"
            } else {
                "/error/message"
            };
            if let Some(echo) = echo
                && let Some(Value::String(message)) = body.pointer_mut(pointer)
            {
                message.push_str(&format!(" Key provided: {echo}."));
            }
            let response = json_response(status, &body);
            return Answer::Full(typed_error(call.provider, case, response));
        }
        Verdict::OverQuota(retry_after) => {
            let mut response = error_response(
                call.provider,
                ErrorCase::RateLimited {
                    retry_after: Some(*retry_after),
                },
            );
            retry_header(&mut response, *retry_after, RetryAfterForm::Seconds);
            return Answer::Full(response);
        }
        Verdict::Fault(fault) => Some(fault),
    };
    let json: Value = match serde_json::from_slice(&call.body) {
        Ok(json) => json,
        Err(_) => {
            return Answer::Full(error_response(
                call.provider,
                ErrorCase::Status(StatusCode::BAD_REQUEST),
            ));
        }
    };
    match fault {
        None => normal(call, decision, &json, None, used),
        Some(Fault::Status(code)) => {
            let status = StatusCode::from_u16(*code)
                .ok()
                .filter(|s| s.is_client_error() || s.is_server_error())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let case = if status == StatusCode::TOO_MANY_REQUESTS {
                ErrorCase::RateLimited { retry_after: None }
            } else {
                ErrorCase::Status(status)
            };
            Answer::Full(error_response(call.provider, case))
        }
        Some(Fault::RateLimited { retry_after, form }) => {
            let mut response = error_response(
                call.provider,
                ErrorCase::RateLimited {
                    retry_after: Some(*retry_after),
                },
            );
            retry_header(&mut response, *retry_after, *form);
            Answer::Full(response)
        }
        Some(Fault::QuotaExhausted) => {
            Answer::Full(error_response(call.provider, ErrorCase::QuotaExhausted))
        }
        Some(Fault::Overloaded) => {
            Answer::Full(error_response(call.provider, ErrorCase::Overloaded))
        }
        Some(Fault::DropConnection) => Answer::Drop,
        Some(Fault::HtmlError) => {
            let mut response = Response::new(Body::from(responses::HTML_ERROR_PAGE));
            *response.status_mut() = StatusCode::BAD_GATEWAY;
            set_header(&mut response, CONTENT_TYPE, "text/html");
            set_header(&mut response, http::header::SERVER, "nginx");
            Answer::Full(response)
        }
        Some(fault) => normal(call, decision, &json, Some(fault), used),
    }
}

/// The normal answer, or one spoilt by a body fault (malformed JSON, stall, cut, in-stream
/// error).
fn normal(
    call: &Call,
    decision: &Decision,
    json: &Value,
    fault: Option<&Fault>,
    used: &mut Option<u64>,
) -> Answer {
    if call.route == Route::OpenAiEmbeddings {
        return match responses::openai_embeddings(json, decision.id) {
            Ok(body) if fault == Some(&Fault::ContextLengthExceeded) => {
                let tokens = body["usage"]["prompt_tokens"].as_u64().unwrap_or(0);
                let case = ErrorCase::ContextLengthExceeded {
                    tokens,
                    limit: tokens.saturating_sub(1),
                };
                Answer::Full(error_response(call.provider, case))
            }
            Ok(body) => spoil_full(body, fault, call.provider),
            Err(message) => {
                let error = json!({"error": {"message": message,
                    "type": "invalid_request_error", "param": "input", "code": null}});
                Answer::Full(json_response(StatusCode::BAD_REQUEST, &error))
            }
        };
    }
    let prompt = Prompt::read(call.route, json, call.url_model.as_deref());
    let too_long = decision
        .context_window
        .is_some_and(|window| prompt.prompt_tokens > window);
    if fault == Some(&Fault::ContextLengthExceeded) || (fault.is_none() && too_long) {
        let tokens = prompt.prompt_tokens;
        let limit = decision
            .context_window
            .unwrap_or_else(|| tokens.saturating_sub(1));
        let case = ErrorCase::ContextLengthExceeded { tokens, limit };
        return Answer::Full(error_response(call.provider, case));
    }
    let text = decision
        .reply
        .clone()
        .unwrap_or_else(|| format!("{}: {}", decision.name, prompt.last_user));
    let reply = Reply::new(decision.id, &prompt, text);
    *used = Some(reply.prompt_tokens.saturating_add(reply.completion_tokens));
    if !prompt.stream {
        let body = match call.provider {
            Provider::OpenAi => responses::openai_chat(&reply),
            Provider::Anthropic => responses::anthropic_message(&reply),
            Provider::Gemini => responses::gemini_generate(&reply),
            Provider::Bedrock => responses::bedrock_converse(&reply),
        };
        return spoil_full(body, fault, call.provider);
    }
    let with_usage = fault != Some(&Fault::StreamWithoutUsage);
    let stream = match call.provider {
        Provider::OpenAi => {
            responses::openai_chat_stream(&reply, prompt.include_usage && with_usage)
        }
        Provider::Anthropic => responses::anthropic_stream(&reply, with_usage),
        Provider::Gemini => responses::gemini_stream(&reply, call.sse, with_usage),
        Provider::Bedrock => responses::bedrock_stream(&reply, with_usage),
    };
    let content_type = match call.provider {
        Provider::Gemini if !call.sse => "application/json",
        Provider::Bedrock => "application/vnd.amazon.eventstream",
        _ => "text/event-stream",
    };
    let (events, end) = stream_events(stream, fault, call.provider);
    Answer::Stream {
        status: StatusCode::OK,
        content_type,
        events,
        end,
    }
}

/// A whole JSON answer, as the fault leaves it.
fn spoil_full(body: Value, fault: Option<&Fault>, provider: Provider) -> Answer {
    let text = body.to_string();
    let (events, end) = match fault {
        Some(Fault::MalformedJson) => {
            let mut response = Response::new(Body::from(responses::truncate_json(&text)));
            set_header(&mut response, CONTENT_TYPE, "application/json");
            return Answer::Full(response);
        }
        Some(Fault::StallStream { .. }) => (responses::truncate_json(&text), StreamEnd::Stall),
        Some(Fault::CutStream { .. }) => (responses::truncate_json(&text), StreamEnd::Cut),
        Some(Fault::StreamErrorEvent { .. } | Fault::StreamBareError { .. }) => {
            return Answer::Full(error_response(provider, ErrorCase::Overloaded));
        }
        _ => return Answer::Full(json_response(StatusCode::OK, &body)),
    };
    Answer::Stream {
        status: StatusCode::OK,
        content_type: "application/json",
        events: vec![Bytes::from(events)],
        end,
    }
}

fn stream_events(
    stream: StreamAnswer,
    fault: Option<&Fault>,
    provider: Provider,
) -> (Vec<Bytes>, StreamEnd) {
    let StreamAnswer {
        framing,
        opening,
        mut chunks,
        closing,
        trailer,
    } = stream;
    let mut events: Vec<Event> = opening;
    let mut end = StreamEnd::Finish;
    let mut complete = false;
    match fault {
        Some(Fault::StallStream { after_chunks }) => {
            chunks.truncate(*after_chunks);
            events.extend(chunks);
            end = StreamEnd::Stall;
        }
        Some(Fault::CutStream { after_chunks }) => {
            chunks.truncate(*after_chunks);
            events.extend(chunks);
            end = StreamEnd::Cut;
        }
        Some(Fault::StreamErrorEvent {
            after_chunks,
            error,
        }) => {
            chunks.truncate(*after_chunks);
            events.extend(chunks);
            events.push(responses::stream_error(provider, *error));
        }
        Some(Fault::StreamBareError {
            after_chunks,
            shape,
        }) => {
            if matches!(framing, Framing::SseCrLf | Framing::Sse) {
                // Gemini ends in its last chunk (`finishReason`), the others in closing
                // events: either way the clean end follows the error.
                let end = if closing.is_empty() {
                    chunks.pop()
                } else {
                    None
                };
                chunks.truncate(*after_chunks);
                events.extend(chunks);
                events.push(responses::bare_error(*shape));
                events.extend(end);
                events.extend(closing);
                complete = true;
            } else {
                chunks.truncate(*after_chunks);
                events.extend(chunks);
                events.push(responses::stream_error(provider, StreamError::Overloaded));
            }
        }
        Some(Fault::MalformedJson) => {
            if let Some(first) = chunks.first_mut() {
                *first = first.garbled();
            }
            events.extend(chunks);
            events.extend(closing);
            complete = true;
        }
        _ => {
            events.extend(chunks);
            events.extend(closing);
            complete = true;
        }
    }
    let mut bytes: Vec<Bytes> = events
        .iter()
        .enumerate()
        .map(|(i, event)| event.encode(framing, i))
        .collect();
    if let Some(trailer) = trailer
        && (complete || end == StreamEnd::Finish)
    {
        bytes.push(Bytes::from_static(trailer.as_bytes()));
    }
    (bytes, end)
}

/// A body that sends `events` with `delay` between them, then ends as `end` says. It holds
/// the request's [`InFlight`] until it is over, so a client that leaves mid-stream counts as
/// cancelled.
pub(super) fn stream_body(
    events: Vec<Bytes>,
    end: StreamEnd,
    delay: Duration,
    in_flight: InFlight,
) -> Body {
    struct Progress {
        events: std::vec::IntoIter<Bytes>,
        sent: usize,
        delay: Duration,
        end: StreamEnd,
        in_flight: Option<InFlight>,
    }
    let progress = Progress {
        events: events.into_iter(),
        sent: 0,
        delay,
        end,
        in_flight: Some(in_flight),
    };
    Body::from_stream(stream::unfold(progress, |mut p| async move {
        if let Some(event) = p.events.next() {
            if p.sent > 0 && !p.delay.is_zero() {
                tokio::time::sleep(p.delay).await;
            }
            p.sent += 1;
            return Some((Ok(event), p));
        }
        let in_flight = p.in_flight.take()?;
        match p.end {
            StreamEnd::Finish => {
                in_flight.finish();
                None
            }
            StreamEnd::Stall | StreamEnd::Cut => {
                if p.end == StreamEnd::Stall {
                    tokio::time::sleep(STALL).await;
                }
                // hyper writes what it has buffered when the body is pending; without this the
                // error would abort the connection before the chunks (or the head) went out.
                tokio::task::yield_now().await;
                in_flight.finish();
                // An error from the body makes hyper abort the connection mid-answer.
                Some((Err(io::Error::other("mock: stream cut")), p))
            }
        }
    }))
}

pub(super) fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = status;
    set_header(&mut response, CONTENT_TYPE, "application/json");
    response
}

pub(super) fn error_response(provider: Provider, case: ErrorCase) -> Response<Body> {
    let (status, body) = responses::error_body(provider, case);
    typed_error(provider, case, json_response(status, &body))
}

/// An error answer with the header Bedrock names the error's type in
/// (`x-amzn-errortype: ThrottlingException:http://internal.amazon.com/...`).
fn typed_error(
    provider: Provider,
    case: ErrorCase,
    mut response: Response<Body>,
) -> Response<Body> {
    if provider == Provider::Bedrock {
        let name = HeaderName::from_static("x-amzn-errortype");
        set_header(&mut response, name, &responses::bedrock_error_type(case));
    }
    response
}

pub(super) fn set_header(response: &mut Response<Body>, name: HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        response.headers_mut().insert(name, value);
    }
}

fn retry_header(response: &mut Response<Body>, after: Duration, form: RetryAfterForm) {
    let whole_seconds = duration_format::whole_seconds(after);
    let (name, value) = match form {
        RetryAfterForm::Seconds => (http::header::RETRY_AFTER, whole_seconds.to_string()),
        RetryAfterForm::HttpDate => {
            // A second more, as the date drops the current second's fraction.
            // An HTTP date ends with year 9999 (and `httpdate` panics past it).
            let latest = SystemTime::UNIX_EPOCH + Duration::from_secs(253_402_300_799);
            let at = SystemTime::now()
                .checked_add(Duration::from_secs(whole_seconds.saturating_add(1)))
                .map_or(latest, |at| at.min(latest));
            (http::header::RETRY_AFTER, httpdate::fmt_http_date(at))
        }
        RetryAfterForm::Millis => (
            HeaderName::from_static("retry-after-ms"),
            after.as_millis().to_string(),
        ),
        RetryAfterForm::MsMillis => (
            HeaderName::from_static("x-ms-retry-after-ms"),
            after.as_millis().to_string(),
        ),
    };
    set_header(response, name, &value);
}

/// Headers every answer carries: who answered, and the provider's rate-limit headers.
pub(super) fn decorate(response: &mut Response<Body>, call: &Call, decision: &Decision) {
    set_header(
        response,
        HeaderName::from_static("x-mock-server"),
        &decision.name,
    );
    let id = format!("req_mock{}", decision.id);
    // OpenAI and Gemini's proxies say `x-request-id`; Anthropic says `request-id`, AWS
    // `x-amzn-requestid`.
    let id_header = match call.provider {
        Provider::Anthropic => "request-id",
        Provider::Bedrock => "x-amzn-requestid",
        _ => "x-request-id",
    };
    set_header(response, HeaderName::from_static(id_header), &id);
    let mut limits = decision.limits;
    if response.status() == StatusCode::TOO_MANY_REQUESTS && limits.requests.is_none() {
        let reset = tower_llm_core::retry_after(response.headers()).unwrap_or_default();
        limits.requests = Some(LimitState {
            limit: decision.requests_limit,
            remaining: 0,
            reset,
        });
    }
    let now = SystemTime::now();
    let headers = response.headers_mut();
    let mut put = |name: String, value: String| {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            headers.insert(name, value);
        }
    };
    for (what, limit) in [("requests", limits.requests), ("tokens", limits.tokens)] {
        let Some(limit) = limit else { continue };
        match call.provider {
            Provider::OpenAi => {
                put(format!("x-ratelimit-limit-{what}"), limit.limit.to_string());
                put(
                    format!("x-ratelimit-remaining-{what}"),
                    limit.remaining.to_string(),
                );
                put(
                    format!("x-ratelimit-reset-{what}"),
                    duration_format::openai(limit.reset),
                );
            }
            Provider::Anthropic => {
                put(
                    format!("anthropic-ratelimit-{what}-limit"),
                    limit.limit.to_string(),
                );
                put(
                    format!("anthropic-ratelimit-{what}-remaining"),
                    limit.remaining.to_string(),
                );
                // Whole seconds, rounded up: a reset written down is never earlier than
                // the real one, or a client that waits for it gets the 429.
                let reset_at = now.checked_add(limit.reset).unwrap_or(now);
                let fraction = reset_at
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.subsec_nanos());
                let reset_at = if fraction == 0 {
                    reset_at
                } else {
                    reset_at
                        .checked_add(Duration::from_nanos(u64::from(1_000_000_000 - fraction)))
                        .unwrap_or(reset_at)
                };
                put(
                    format!("anthropic-ratelimit-{what}-reset"),
                    duration_format::rfc3339(reset_at),
                );
            }
            // Neither sends rate-limit headers.
            Provider::Gemini | Provider::Bedrock => {}
        }
    }
}
