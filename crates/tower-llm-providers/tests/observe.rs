//! The providers' funnel, over the testkit's mock: each call (chat, stream, embeddings, a
//! failure) makes one GenAI client span with the conventions' attributes, an event at its
//! end, and the GenAI metrics with the `name` label, described with their units; a stream's
//! span ends with the stream. No prompt, answer or key reaches a field or a label.
//!
//! One `#[test]`: tracing caches callsite interest per process, so a capturing subscriber
//! must not share the binary with tests running beside it.

#![cfg(all(feature = "tracing", feature = "metrics"))]
#![allow(clippy::unwrap_used)]

use futures_util::StreamExt;
use metrics::Unit;
use tower::{Service, ServiceExt};
use tower_llm_providers::{
    Anthropic, ChatChunk, ChatRequest, EmbeddingRequest, HttpClientConfig, Message, OpenAi,
    Streaming,
};
use tower_llm_testkit::observe::{Capture, Metric};
use tower_llm_testkit::{Fault, FaultPlan, MockServer};

const PROMPT: &str = "PROMPT-MARKER-7f3a what is the capital of France?";
const KEY: &str = "sk-KEY-MARKER-91be";
const MARKERS: [&str; 3] = ["PROMPT-MARKER", "KEY-MARKER", "ANSWER-MARKER"];

fn samples(metric: &Metric) -> Vec<f64> {
    metric.histogram().to_vec()
}

#[test]
fn calls_make_genai_spans_events_and_metrics() {
    let capture = Capture::install();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(cases(&capture));

    capture.assert_absent(&MARKERS);
    let all = capture.metrics();

    // Chat: duration and both token types, with the response model the mock named.
    let chat = [
        ("name", "obs-openai"),
        ("gen_ai_operation_name", "chat"),
        ("gen_ai_provider_name", "openai"),
        ("gen_ai_request_model", "gpt-4o-mini"),
        ("gen_ai_response_model", "gpt-4o-mini"),
    ];
    let duration = all
        .find("gen_ai_client_operation_duration_seconds", &chat)
        .unwrap();
    duration.assert_described(Unit::Seconds);
    assert_eq!(samples(duration).len(), 1);
    assert!(duration.labels.iter().all(|(k, _)| k != "error_type"));
    let input = [chat.as_slice(), &[("gen_ai_token_type", "input")]].concat();
    let output = [chat.as_slice(), &[("gen_ai_token_type", "output")]].concat();
    let input = all.find("gen_ai_client_token_usage", &input).unwrap();
    assert_eq!(input.unit, Some(Unit::Count));
    assert!(samples(input)[0] > 0.0);
    assert!(samples(all.find("gen_ai_client_token_usage", &output).unwrap())[0] > 0.0);
    assert!(
        all.find(
            "gen_ai_client_operation_time_to_first_chunk_seconds",
            &[("name", "obs-openai")]
        )
        .is_none(),
        "time to first chunk is for streams only"
    );

    // Stream: duration, tokens and time to first chunk.
    let stream = [
        ("name", "obs-anthropic"),
        ("gen_ai_operation_name", "chat"),
        ("gen_ai_provider_name", "anthropic"),
        ("gen_ai_request_model", "claude-sonnet-4-5"),
    ];
    let ttfc = all
        .find(
            "gen_ai_client_operation_time_to_first_chunk_seconds",
            &stream,
        )
        .unwrap();
    assert_eq!(ttfc.unit, Some(Unit::Seconds));
    assert!(ttfc.description.is_some());
    assert_eq!(samples(ttfc).len(), 1);
    assert_eq!(
        samples(
            all.find("gen_ai_client_operation_duration_seconds", &stream)
                .unwrap()
        )
        .len(),
        1
    );
    let stream_out = [stream.as_slice(), &[("gen_ai_token_type", "output")]].concat();
    assert!(samples(all.find("gen_ai_client_token_usage", &stream_out).unwrap())[0] > 0.0);

    // Embeddings: input tokens only.
    let embeddings = [
        ("name", "obs-openai"),
        ("gen_ai_operation_name", "embeddings"),
        ("gen_ai_request_model", "text-embedding-3-small"),
    ];
    assert_eq!(
        samples(
            all.find("gen_ai_client_operation_duration_seconds", &embeddings)
                .unwrap()
        )
        .len(),
        1
    );
    let emb_in = [embeddings.as_slice(), &[("gen_ai_token_type", "input")]].concat();
    let emb_out = [embeddings.as_slice(), &[("gen_ai_token_type", "output")]].concat();
    assert!(all.find("gen_ai_client_token_usage", &emb_in).is_some());
    assert!(all.find("gen_ai_client_token_usage", &emb_out).is_none());

    // Failure: the duration carries `error_type`; the crate's counters move.
    let failed = [
        ("name", "obs-failing"),
        ("gen_ai_operation_name", "chat"),
        ("error_type", "overloaded"),
    ];
    assert_eq!(
        samples(
            all.find("gen_ai_client_operation_duration_seconds", &failed)
                .unwrap()
        )
        .len(),
        1
    );
    let failures = all
        .find(
            "tower_llm_providers_failures_total",
            &[
                ("name", "obs-failing"),
                ("call", "chat"),
                ("kind", "overloaded"),
            ],
        )
        .unwrap();
    assert_eq!(failures.counter(), 1);
    assert_eq!(failures.unit, Some(Unit::Count));
    for (call, n) in [("chat", 1), ("embeddings", 1)] {
        let requests = all
            .find(
                "tower_llm_providers_requests_total",
                &[("name", "obs-openai"), ("call", call)],
            )
            .unwrap();
        assert_eq!(requests.counter(), n, "{call}");
        assert!(requests.description.is_some());
    }
    let streams = all
        .find(
            "tower_llm_providers_requests_total",
            &[("name", "obs-anthropic"), ("call", "stream")],
        )
        .unwrap();
    assert_eq!(streams.counter(), 1);
}

async fn cases(capture: &Capture) {
    let server = MockServer::start(FaultPlan::healthy()).await.unwrap();
    let base = server.base_url();
    let port = server.addr().port();
    let client = HttpClientConfig::default().build().unwrap();
    let mut openai = OpenAi::compatible(format!("{base}/v1"))
        .api_key(KEY)
        .name("obs-openai")
        .record_sizes(true)
        .build_with(client.clone())
        .unwrap();

    // Chat.
    let request = ChatRequest::new("gpt-4o-mini", vec![Message::user(PROMPT)])
        .temperature(0.5)
        .max_tokens(64);
    let answer = ServiceExt::<ChatRequest>::ready(&mut openai)
        .await
        .unwrap()
        .call(request)
        .await
        .unwrap();
    assert!(answer.content.contains("PROMPT-MARKER"), "the mock echoes");
    let span = capture
        .closed_span("chat", "obs-openai")
        .unwrap_or_else(|| panic!("no chat span:\n{}", capture.text()));
    assert_eq!(span["otel.name"], "chat gpt-4o-mini");
    assert_eq!(span["otel.kind"], "client");
    assert_eq!(span["gen_ai.operation.name"], "chat");
    assert_eq!(span["gen_ai.provider.name"], "openai");
    assert_eq!(span["gen_ai.request.model"], "gpt-4o-mini");
    assert_eq!(span["gen_ai.request.max_tokens"], 64);
    assert_eq!(span["gen_ai.request.temperature"], 0.5);
    assert_eq!(span["gen_ai.response.model"], "gpt-4o-mini");
    assert_eq!(span["gen_ai.response.id"], answer.id.as_str());
    assert_eq!(span["gen_ai.response.finish_reasons"], r#"["stop"]"#);
    let usage = answer.usage.unwrap();
    assert_eq!(span["gen_ai.usage.input_tokens"], usage.input_tokens);
    assert_eq!(span["gen_ai.usage.output_tokens"], usage.output_tokens);
    assert_eq!(span["server.address"], "127.0.0.1");
    assert_eq!(span["server.port"], port);
    assert_eq!(span["prompt_chars"], PROMPT.chars().count());
    assert_eq!(span["answer_chars"], answer.content.chars().count());
    assert!(span.get("error.type").is_none());
    let finished = capture.find_named("provider call finished", "obs-openai");
    assert_eq!(finished.len(), 1);
    assert_eq!(finished[0]["level"], "DEBUG");
    assert_eq!(finished[0]["fields"]["input_tokens"], usage.input_tokens);

    // Stream, Anthropic: the span lives as long as the stream.
    let mut anthropic = Anthropic::builder()
        .api_key(KEY)
        .base_url(format!("{base}/v1"))
        .name("obs-anthropic")
        .build_with(client.clone())
        .unwrap();
    let request = ChatRequest::new("claude-sonnet-4-5", vec![Message::user(PROMPT)]).streaming();
    ServiceExt::<Streaming<ChatRequest>>::ready(&mut anthropic)
        .await
        .unwrap();
    let mut stream = anthropic.call(request).await.unwrap();
    assert!(
        capture.closed_span("chat", "obs-anthropic").is_none(),
        "the stream's span must not end at its head"
    );
    let mut finish = None;
    let mut usage = None;
    while let Some(item) = stream.next().await {
        match item.unwrap() {
            ChatChunk::Finish(reason) => finish = Some(reason),
            ChatChunk::Usage(u) => usage = Some(u),
            _ => {}
        }
        assert!(
            capture.closed_span("chat", "obs-anthropic").is_none(),
            "the stream's span ended before the stream"
        );
    }
    assert!(finish.is_some());
    let usage = usage.unwrap();
    let span = capture
        .closed_span("chat", "obs-anthropic")
        .expect("the stream's span closed at its end");
    assert_eq!(span["otel.name"], "chat claude-sonnet-4-5");
    assert_eq!(span["gen_ai.provider.name"], "anthropic");
    assert_eq!(span["gen_ai.request.max_tokens"], 4096, "the default sent");
    assert_eq!(span["stream"], true);
    assert_eq!(span["gen_ai.response.finish_reasons"], r#"["stop"]"#);
    assert_eq!(span["gen_ai.usage.input_tokens"], usage.input_tokens);
    assert_eq!(span["gen_ai.usage.output_tokens"], usage.output_tokens);
    assert!(
        span["gen_ai.response.time_to_first_chunk"]
            .as_f64()
            .unwrap()
            >= 0.0
    );
    assert!(span["gen_ai.response.id"].is_string(), "the request id");
    assert!(span.get("prompt_chars").is_none(), "sizes are opt-in");
    let first = capture.find_named("first chunk", "obs-anthropic");
    assert_eq!(first.len(), 1);
    assert_eq!(first[0]["level"], "TRACE");
    drop(stream);

    // Embeddings.
    let request = EmbeddingRequest::new("text-embedding-3-small", vec![PROMPT.to_owned()]);
    ServiceExt::<EmbeddingRequest>::ready(&mut openai)
        .await
        .unwrap()
        .call(request)
        .await
        .unwrap();
    let span = capture
        .closed_span("embeddings", "obs-openai")
        .expect("embeddings span");
    assert_eq!(span["otel.name"], "embeddings text-embedding-3-small");
    assert_eq!(span["gen_ai.operation.name"], "embeddings");
    assert!(span["gen_ai.usage.input_tokens"].is_number());
    assert!(span.get("gen_ai.usage.output_tokens").is_none());

    // A failure: error.type on the span, a warning event.
    let failing = MockServer::start(FaultPlan::healthy().script([Some(Fault::Overloaded)]))
        .await
        .unwrap();
    let mut service = OpenAi::compatible(format!("{}/v1", failing.base_url()))
        .api_key(KEY)
        .name("obs-failing")
        .build_with(client)
        .unwrap();
    let request = ChatRequest::new("gpt-4o-mini", vec![Message::user(PROMPT)]);
    let error = ServiceExt::<ChatRequest>::ready(&mut service)
        .await
        .unwrap()
        .call(request)
        .await
        .unwrap_err();
    let span = capture
        .closed_span("chat", "obs-failing")
        .expect("the failed call's span closed");
    assert_eq!(span["error.type"], error.kind().as_str());
    assert_eq!(span["error.type"], "overloaded");
    assert_eq!(span["otel.status_code"], "ERROR");
    let failed = capture.find_named("provider call failed", "obs-failing");
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["level"], "WARN");
    assert_eq!(failed[0]["fields"]["error.type"], "overloaded");
    assert_eq!(failed[0]["fields"]["http.response.status_code"], 503);
}
