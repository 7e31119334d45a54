//! Bedrock's Converse and ConverseStream routes: the answers, the binary event-stream framing
//! (checked CRC by CRC here), the faults, and the key read from a SigV4 `Authorization`.

#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use serde_json::{Value, json};
use tower_llm_testkit::{
    Fault, FaultPlan, KeyEcho, MockServer, Route, StreamError, TestClient, bedrock_converse,
    bedrock_converse_stream, post_json, with_api_key,
};

const MODEL: &str = "anthropic.claude-3-5-haiku-20241022-v1:0";

async fn server(plan: FaultPlan) -> MockServer {
    MockServer::start(plan.name("rock"))
        .await
        .expect("mock starts")
}

fn json_of(response: &http::Response<Bytes>) -> Value {
    serde_json::from_slice(response.body()).expect("JSON body")
}

/// One event-stream message, read and checked by the framing's definition.
#[derive(Debug)]
struct Frame {
    headers: Vec<(String, String)>,
    payload: Value,
}

impl Frame {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap())
}

/// Reads every message of `body`, checking both CRC32s of each; the bytes left over.
fn read_frames(mut body: &[u8]) -> (Vec<Frame>, usize) {
    let mut frames = Vec::new();
    while body.len() >= 12 {
        let total = u32_at(body, 0) as usize;
        let headers_len = u32_at(body, 4) as usize;
        assert_eq!(u32_at(body, 8), crc32fast::hash(&body[..8]), "prelude CRC");
        if body.len() < total {
            break;
        }
        assert_eq!(
            u32_at(body, total - 4),
            crc32fast::hash(&body[..total - 4]),
            "message CRC"
        );
        let mut headers = Vec::new();
        let mut rest = &body[12..12 + headers_len];
        while let Some((&len, tail)) = rest.split_first() {
            let (name, tail) = tail.split_at(usize::from(len));
            assert_eq!(tail[0], 7, "string headers only");
            let value_len = usize::from(u16::from_be_bytes([tail[1], tail[2]]));
            let value = &tail[3..3 + value_len];
            headers.push((
                String::from_utf8(name.to_vec()).unwrap(),
                String::from_utf8(value.to_vec()).unwrap(),
            ));
            rest = &tail[3 + value_len..];
        }
        let payload =
            serde_json::from_slice(&body[12 + headers_len..total - 4]).unwrap_or(Value::Null);
        frames.push(Frame { headers, payload });
        body = &body[total..];
    }
    (frames, body.len())
}

#[tokio::test]
async fn converse_answers_like_bedrock_and_counts_the_access_key() {
    let server = server(FaultPlan::healthy()).await;
    let client = TestClient::new();
    let request = with_api_key(
        bedrock_converse(&server.base_url(), MODEL, "What is Rust?"),
        "AKIDMOCK1",
    );
    assert!(request.uri().path().contains("v1%3A0/converse"));
    let response = client.send(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["x-amzn-requestid"]
            .to_str()
            .unwrap()
            .starts_with("req_mock")
    );
    let body = json_of(&response);
    assert_eq!(
        body["output"]["message"],
        json!({"role": "assistant", "content": [{"text": "rock: What is Rust?"}]})
    );
    assert_eq!(body["stopReason"], "end_turn");
    let usage = &body["usage"];
    assert_eq!(
        usage["totalTokens"].as_u64(),
        Some(usage["inputTokens"].as_u64().unwrap() + usage["outputTokens"].as_u64().unwrap())
    );
    let counters = server.counters();
    assert_eq!(counters.route(Route::BedrockConverse), 1);
    assert_eq!(counters.key("AKIDMOCK1"), 1);
    assert_eq!(server.received()[0].api_key, "AKIDMOCK1");
}

#[tokio::test]
async fn converse_stream_is_framed_with_correct_crcs() {
    let server = server(FaultPlan::healthy()).await;
    let client = TestClient::new();
    let request = bedrock_converse_stream(&server.base_url(), MODEL, "one two three");
    let response = client.send(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/vnd.amazon.eventstream"
    );
    let (frames, left) = read_frames(response.body());
    assert_eq!(left, 0);
    let types: Vec<&str> = frames
        .iter()
        .map(|f| f.header(":event-type").unwrap())
        .collect();
    assert_eq!(types.first(), Some(&"messageStart"));
    assert_eq!(
        &types[types.len() - 3..],
        ["contentBlockStop", "messageStop", "metadata"]
    );
    let text: String = frames
        .iter()
        .filter(|f| f.header(":event-type") == Some("contentBlockDelta"))
        .map(|f| f.payload["delta"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(text, "rock: one two three");
    for frame in &frames {
        assert_eq!(frame.header(":message-type"), Some("event"));
        assert_eq!(frame.header(":content-type"), Some("application/json"));
    }
    let metadata = &frames.last().unwrap().payload;
    assert!(metadata["usage"]["outputTokens"].as_u64().unwrap() > 0);
    assert_eq!(frames[frames.len() - 2].payload["stopReason"], "end_turn");
    assert_eq!(server.counters().route(Route::BedrockConverseStream), 1);
}

#[tokio::test]
async fn a_small_budget_stops_at_max_tokens() {
    let server = server(FaultPlan::healthy().reply("one two three four five six seven")).await;
    let mut request = bedrock_converse(&server.base_url(), MODEL, "x");
    *request.body_mut() = Bytes::from(
        json!({"messages": [{"role": "user", "content": [{"text": "x"}]}],
            "inferenceConfig": {"maxTokens": 2}})
        .to_string(),
    );
    let body = json_of(&TestClient::new().send(request).await.unwrap());
    assert_eq!(body["stopReason"], "max_tokens");
    assert!(body["usage"]["outputTokens"].as_u64().unwrap() <= 2);
}

#[tokio::test]
async fn errors_carry_the_error_type_header() {
    let client = TestClient::new();
    for (fault, status, error_type) in [
        (Fault::Status(429), 429, "ThrottlingException"),
        (Fault::Status(500), 500, "InternalServerException"),
        (Fault::Status(400), 400, "ValidationException"),
        (Fault::Overloaded, 503, "ServiceUnavailableException"),
        (Fault::QuotaExhausted, 400, "ServiceQuotaExceededException"),
        (Fault::ContextLengthExceeded, 400, "ValidationException"),
    ] {
        let server = server(FaultPlan::healthy().script([Some(fault.clone())])).await;
        let response = client
            .send(bedrock_converse(&server.base_url(), MODEL, "x"))
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{fault:?}");
        let header = response.headers()["x-amzn-errortype"].to_str().unwrap();
        assert_eq!(header.split(':').next(), Some(error_type), "{fault:?}");
        assert!(header.contains(":http://internal.amazon.com/"));
        let body = json_of(&response);
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert!(body.get("error").is_none());
    }
    let healthy = server(FaultPlan::healthy()).await;
    let unknown = post_json(&healthy.url("/model/m/invoke-something"), &json!({}));
    let response = client.send(unknown).await.unwrap();
    assert_eq!(response.status(), 404);
    assert!(response.headers().contains_key("x-amzn-errortype"));
}

#[tokio::test]
async fn a_refused_key_gets_aws_403_and_may_be_echoed() {
    let plan = FaultPlan::healthy()
        .api_keys(["AKIDGOOD"])
        .echo_api_key(KeyEcho::Whole);
    let server = server(plan).await;
    let client = TestClient::new();
    let refused = with_api_key(
        bedrock_converse(&server.base_url(), MODEL, "x"),
        "AKIDBAD0123456789",
    );
    let response = client.send(refused).await.unwrap();
    assert_eq!(response.status(), 403);
    assert!(
        response.headers()["x-amzn-errortype"]
            .to_str()
            .unwrap()
            .starts_with("UnrecognizedClientException:")
    );
    let message = json_of(&response)["message"].as_str().unwrap().to_owned();
    assert!(
        message.ends_with("Key provided: AKIDBAD0123456789."),
        "{message}"
    );
    let accepted = with_api_key(bedrock_converse(&server.base_url(), MODEL, "x"), "AKIDGOOD");
    assert_eq!(client.send(accepted).await.unwrap().status(), 200);
}

#[tokio::test]
async fn stream_faults_keep_the_framing() {
    let client = TestClient::new();
    let stream =
        |server: &MockServer| bedrock_converse_stream(&server.base_url(), MODEL, "a b c d");

    let error_event = server(FaultPlan::healthy().script([Some(Fault::StreamErrorEvent {
        after_chunks: 2,
        error: StreamError::Overloaded,
    })]))
    .await;
    let response = client.send(stream(&error_event)).await.unwrap();
    let (frames, left) = read_frames(response.body());
    assert_eq!(left, 0);
    let last = frames.last().unwrap();
    assert_eq!(last.header(":message-type"), Some("exception"));
    assert_eq!(
        last.header(":exception-type"),
        Some("serviceUnavailableException")
    );
    assert!(last.payload["message"].is_string());
    assert_eq!(frames.len(), 1 + 2 + 1);

    let garbled = server(FaultPlan::healthy().script([Some(Fault::MalformedJson)])).await;
    let response = client.send(stream(&garbled)).await.unwrap();
    let (frames, left) = read_frames(response.body());
    assert_eq!(left, 0, "the framing stays valid, the JSON inside does not");
    assert_eq!(frames[1].payload, Value::Null);

    let cut =
        server(FaultPlan::healthy().script([Some(Fault::CutStream { after_chunks: 1 })])).await;
    let mut response = client.send_streaming(stream(&cut)).await.unwrap();
    let mut body = Vec::new();
    let ended = loop {
        match TestClient::next_chunk(response.body_mut()).await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) => break Ok(()),
            Err(error) => break Err(error),
        }
    };
    assert!(ended.is_err(), "the connection is cut");
    let (frames, _) = read_frames(&body);
    assert_eq!(frames.len(), 2, "messageStart and one delta before the cut");
}
