//! Embeddings batching over real HTTP, against the testkit's mock server, in paused time.

use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use proptest::prelude::*;
use serde_json::Value;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};
use tower_llm_batch::{Batch, BatchFailed, BatchLayer, EmbeddingsAdapter};
use tower_llm_core::{
    BoxError, Classify, DefaultClassifier, FailureKind, classify_dyn_error, estimate_text_tokens,
};
use tower_llm_testkit::{
    Fault, FaultPlan, MockServer, RetryAfterForm, Route, TestClient, embedding_for,
    openai_embeddings, with_api_key,
};

type Embeddings = Batch<http::Request<Bytes>, EmbeddingsAdapter, http::Response<Bytes>>;

fn batcher(max_items: usize, max_wait: Duration) -> Embeddings {
    BatchLayer::embeddings()
        .max_items(max_items)
        .max_wait(max_wait)
        .build()
        .expect("valid")
        .layer(TestClient::new())
}

async fn embed(
    mut service: Embeddings,
    request: http::Request<Bytes>,
) -> Result<http::Response<Bytes>, BoxError> {
    service.ready().await?.call(request).await
}

fn json(response: &http::Response<Bytes>) -> Value {
    serde_json::from_slice(response.body()).expect("a JSON body")
}

/// The vectors of an embeddings response, checking they are numbered from 0.
fn vectors(response: &http::Response<Bytes>) -> Vec<Vec<f32>> {
    assert_eq!(response.status(), 200);
    let body = json(response);
    let data = body["data"].as_array().expect("a data array");
    data.iter()
        .enumerate()
        .map(|(i, entry)| {
            assert_eq!(entry["index"].as_u64(), Some(i as u64));
            serde_json::from_value(entry["embedding"].clone()).expect("a vector")
        })
        .collect()
}

fn sent_inputs(server: &MockServer) -> Vec<Vec<String>> {
    server
        .received()
        .iter()
        .map(|request| {
            let body = request.json().expect("JSON");
            serde_json::from_value(body["input"].clone()).expect("an array of strings")
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn twenty_four_callers_make_two_upstream_calls_and_get_their_own_vectors() {
    let server = MockServer::start(FaultPlan::healthy())
        .await
        .expect("server");
    let url = server.base_url();
    let service = batcher(12, Duration::from_secs(1));
    let texts: Vec<String> = (0..24).map(|i| format!("template field {i}")).collect();
    let responses = join_all(texts.iter().map(|text| {
        let service = service.clone();
        let request = openai_embeddings(&url, &[text]);
        tokio::spawn(embed(service, request))
    }))
    .await;

    let mut prompt_tokens = 0;
    for (text, response) in texts.iter().zip(responses) {
        let response = response.expect("no panic").expect("answered");
        assert_eq!(vectors(&response), vec![embedding_for(text, 8)]);
        prompt_tokens += json(&response)["usage"]["prompt_tokens"]
            .as_u64()
            .expect("usage");
    }
    let counters = server.counters();
    assert_eq!(counters.route(Route::OpenAiEmbeddings), 2);
    assert_eq!(counters.requests, 2);
    let sent = sent_inputs(&server);
    assert!(sent.iter().all(|inputs| inputs.len() == 12));
    // The callers' shares of usage add up to what the server billed.
    let billed: u64 = texts.iter().map(|t| estimate_text_tokens(t)).sum();
    assert_eq!(prompt_tokens, billed);
    assert_eq!(service.stats().flushed_full, 2);
}

#[tokio::test(start_paused = true)]
async fn max_wait_flushes_a_partial_batch() {
    let server = MockServer::start(FaultPlan::healthy())
        .await
        .expect("server");
    let url = server.base_url();
    let service = batcher(12, Duration::from_millis(100));
    let start = Instant::now();
    let callers: Vec<_> = (0..5)
        .map(|i| {
            let request = openai_embeddings(&url, &[format!("field {i}")]);
            tokio::spawn(embed(service.clone(), request))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(99)).await;
    assert_eq!(server.counters().requests, 0, "sent before max_wait");
    for (i, caller) in callers.into_iter().enumerate() {
        let response = caller.await.expect("no panic").expect("answered");
        assert_eq!(
            vectors(&response),
            vec![embedding_for(&format!("field {i}"), 8)]
        );
    }
    assert!(start.elapsed() >= Duration::from_millis(100));
    assert_eq!(server.counters().requests, 1);
    assert_eq!(sent_inputs(&server)[0].len(), 5);
    assert_eq!(service.stats().flushed_wait, 1);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_caller_is_left_out_of_the_sent_batch() {
    let server = MockServer::start(FaultPlan::healthy())
        .await
        .expect("server");
    let url = server.base_url();
    let service = batcher(12, Duration::from_millis(50));
    let call = |text: &str| tokio::spawn(embed(service.clone(), openai_embeddings(&url, &[text])));
    let kept = call("kept");
    let dropped = call("dropped");
    let also_kept = call("also kept");
    tokio::time::sleep(Duration::from_millis(10)).await;
    dropped.abort();
    let kept = kept.await.expect("no panic").expect("answered");
    let also_kept = also_kept.await.expect("no panic").expect("answered");
    assert_eq!(vectors(&kept), vec![embedding_for("kept", 8)]);
    assert_eq!(vectors(&also_kept), vec![embedding_for("also kept", 8)]);
    assert_eq!(sent_inputs(&server), vec![vec!["kept", "also kept"]]);
    assert_eq!(service.stats().cancelled, 1);
}

#[tokio::test(start_paused = true)]
async fn a_transport_failure_errors_every_member_classified() {
    let server = MockServer::start(FaultPlan::healthy().script([Some(Fault::DropConnection)]))
        .await
        .expect("server");
    let url = server.base_url();
    let service = batcher(4, Duration::from_secs(1));
    let results = join_all((0..4).map(|i| {
        let request = openai_embeddings(&url, &[format!("x{i}")]);
        embed(service.clone(), request)
    }))
    .await;
    assert_eq!(server.counters().requests, 1);
    for result in results {
        let error = result.expect_err("the connection dropped");
        assert_eq!(
            error
                .downcast_ref::<BatchFailed>()
                .map(BatchFailed::batch_size),
            Some(4)
        );
        assert_eq!(classify_dyn_error(&*error).kind, FailureKind::Transport);
        assert_eq!(
            DefaultClassifier.classify(Err::<&(), _>(&error)).kind(),
            Some(FailureKind::Transport)
        );
    }
}

#[tokio::test(start_paused = true)]
async fn an_error_answer_reaches_every_member_with_its_retry_hint() {
    let limited = Fault::RateLimited {
        retry_after: Duration::from_secs(2),
        form: RetryAfterForm::default(),
    };
    let server = MockServer::start(FaultPlan::healthy().script([Some(limited)]))
        .await
        .expect("server");
    let url = server.base_url();
    let service = batcher(3, Duration::from_secs(1));
    let results = join_all((0..3).map(|i| {
        let request = openai_embeddings(&url, &[format!("y{i}")]);
        embed(service.clone(), request)
    }))
    .await;
    assert_eq!(server.counters().requests, 1);
    for result in results {
        let response = result.expect("an HTTP answer");
        assert_eq!(response.status(), 429);
        let outcome = DefaultClassifier.classify(Ok::<_, &BoxError>(&response));
        assert_eq!(outcome.kind(), Some(FailureKind::RateLimited));
        assert_eq!(outcome.retry_after(), Some(Duration::from_secs(2)));
    }
}

#[tokio::test(start_paused = true)]
async fn tenants_and_models_never_share_a_batch() {
    let server = MockServer::start(FaultPlan::healthy())
        .await
        .expect("server");
    let url = server.base_url();
    let service = batcher(12, Duration::from_millis(20));
    let other_model = {
        let mut request = openai_embeddings(&url, &["m"]);
        let mut body: Value = serde_json::from_slice(request.body()).expect("JSON");
        body["model"] = "text-embedding-3-large".into();
        *request.body_mut() = Bytes::from(body.to_string());
        request
    };
    let requests = vec![
        with_api_key(openai_embeddings(&url, &["a1"]), "tenant-a"),
        with_api_key(openai_embeddings(&url, &["b1"]), "tenant-b"),
        with_api_key(openai_embeddings(&url, &["a2"]), "tenant-a"),
        other_model,
    ];
    let results = join_all(requests.into_iter().map(|r| embed(service.clone(), r))).await;
    assert!(results.iter().all(Result::is_ok));
    let counters = server.counters();
    assert_eq!(counters.requests, 3);
    assert_eq!(counters.key("tenant-a"), 1);
    assert_eq!(counters.key("tenant-b"), 1);
    let mut sent = sent_inputs(&server);
    sent.sort();
    assert_eq!(sent, vec![vec!["a1", "a2"], vec!["b1"], vec!["m"]]);
}

#[tokio::test(start_paused = true)]
async fn invalid_requests_fail_alone_before_queueing() {
    let server = MockServer::start(FaultPlan::healthy())
        .await
        .expect("server");
    let url = server.base_url();
    let service = batcher(2, Duration::from_millis(5));
    let mut bad = openai_embeddings(&url, &["x"]);
    *bad.body_mut() = Bytes::from_static(b"{\"model\":\"m\"}");
    let error = embed(service.clone(), bad).await.expect_err("no input");
    assert_eq!(classify_dyn_error(&*error).kind, FailureKind::BadRequest);
    let good = embed(service.clone(), openai_embeddings(&url, &["fine"]))
        .await
        .expect("answered");
    assert_eq!(vectors(&good), vec![embedding_for("fine", 8)]);
    assert_eq!(service.stats().rejected, 1);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// Callers with random numbers of inputs, batched with random limits: each gets exactly
    /// its own inputs' vectors, in its own order.
    #[test]
    fn results_never_cross_between_callers(
        callers in prop::collection::vec(
            prop::collection::vec("[a-z ]{0,12}", 1..4),
            1..30,
        ),
        max_items in 1usize..10,
        max_wait_ms in 0u64..20,
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let server = MockServer::start(FaultPlan::healthy()).await.expect("server");
            let url = server.base_url();
            let service = batcher(max_items, Duration::from_millis(max_wait_ms));
            let responses = join_all(callers.iter().map(|inputs| {
                let request = openai_embeddings(&url, inputs);
                tokio::spawn(embed(service.clone(), request))
            }))
            .await;
            for (inputs, response) in callers.iter().zip(responses) {
                let response = response.expect("no panic").expect("answered");
                let expected: Vec<Vec<f32>> =
                    inputs.iter().map(|text| embedding_for(text, 8)).collect();
                assert_eq!(vectors(&response), expected);
            }
            let sent = server.counters().requests;
            let floor = callers.len().div_ceil(max_items) as u64;
            assert!(sent >= floor, "{sent} calls for {} callers", callers.len());
            assert!(sent <= callers.len() as u64);
        });
    }
}

#[tokio::test(start_paused = true)]
async fn chat_prompts_packed_into_one_completion_fail_only_the_unanswered_one() {
    // The model answers the first two numbered questions and skips the third.
    let server = MockServer::start(FaultPlan::healthy().reply("1. RED\n2. BLUE"))
        .await
        .expect("server");
    let url = server.base_url();
    let pack = move |questions: Vec<String>| {
        let numbered: Vec<String> = questions
            .iter()
            .enumerate()
            .map(|(i, q)| format!("{}. {q}", i + 1))
            .collect();
        let prompt = format!(
            "Answer each numbered question on its own line, numbered:\n{}",
            numbered.join("\n")
        );
        tower_llm_testkit::openai_chat(&url, "gpt-4o-mini", &prompt)
    };
    let unpack = |response: http::Response<Bytes>, count: usize| {
        let text = serde_json::from_slice::<Value>(response.body())
            .ok()
            .and_then(|body| {
                body["choices"][0]["message"]["content"]
                    .as_str()
                    .map(str::to_owned)
            })
            .unwrap_or_default();
        (1..=count)
            .map(|n| {
                let prefix = format!("{n}. ");
                text.lines()
                    .find_map(|line| line.strip_prefix(&prefix))
                    .map(str::to_owned)
                    .ok_or_else(|| format!("no answer numbered {n}"))
            })
            .collect::<Vec<Result<String, String>>>()
    };
    let service = BatchLayer::packed(pack, unpack)
        .max_items(3)
        .build()
        .expect("valid")
        .layer(TestClient::new());
    let results = join_all(["red?", "blue?", "green?"].map(|question| {
        let mut service = service.clone();
        async move { service.ready().await?.call(question.to_owned()).await }
    }))
    .await;
    assert_eq!(server.counters().route(Route::OpenAiChat), 1);
    let sent = server.received()[0].json().expect("JSON");
    let prompt = sent["messages"][0]["content"].as_str().expect("a prompt");
    assert!(prompt.ends_with("1. red?\n2. blue?\n3. green?"), "{prompt}");
    assert_eq!(results[0].as_deref().expect("answered"), "RED");
    assert_eq!(results[1].as_deref().expect("answered"), "BLUE");
    let error = results[2].as_ref().expect_err("unanswered");
    assert_eq!(error.to_string(), "no answer numbered 3");
}
