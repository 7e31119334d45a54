//! Streams through race and hedge (docs/streams.md, the race row): the winner is the first
//! leg to hand over its stream, at its response head, however long the stream then runs; the
//! legs still waiting for their head are dropped at that moment, which closes their
//! connections; the winner keeps its end signal through [`Answer`]; a stream that breaks
//! after its head is the caller's, not raced or hedged again. Typed providers over the
//! testkit's mock (real HTTP on loopback), on tokio's paused clock.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;
use tower::util::MapResponse;
use tower::{Layer, ServiceExt};
use tower_llm_core::{ClassifyResponse, FailureKind, StreamEnd};
use tower_llm_providers::{
    ChatRequest, HttpChatStream, HttpClientConfig, Message, OpenAi, Streaming,
};
use tower_llm_race::hedge::{HedgeDelay, HedgeLayer};
use tower_llm_race::{Answer, MarkResponse, RaceLayer, RecordAnswer};
use tower_llm_testkit::{Counters, Fault, FaultPlan, Latency, MockServer};

/// A leg: the provider's stream, wrapped so the strategy can mark the winner.
type Leg = MapResponse<OpenAi, fn(HttpChatStream) -> Answer<HttpChatStream>>;

fn leg(server: &MockServer) -> Leg {
    let openai = OpenAi::builder()
        .api_key("sk-test")
        .base_url(format!("{}/v1", server.base_url()))
        .build_with(HttpClientConfig::default().build().unwrap())
        .unwrap();
    ServiceExt::<Streaming<ChatRequest>>::map_response(openai, Answer::new)
}

fn ask() -> Streaming<ChatRequest> {
    ChatRequest::new("m", vec![Message::user("a story in several words")]).streaming()
}

async fn server(plan: FaultPlan) -> MockServer {
    MockServer::start(plan).await.unwrap()
}

/// Answers its head after `latency`, then its whole stream at once.
fn late_head(latency: Duration) -> FaultPlan {
    FaultPlan::healthy().latency(Latency::Fixed(latency))
}

/// Answers its head at once, then one event a second.
fn slow_stream() -> FaultPlan {
    FaultPlan::healthy().stream_chunk_delay(Duration::from_secs(1))
}

/// Where the stream's end lands.
fn watch(answer: &mut Answer<HttpChatStream>) -> Arc<Mutex<Vec<StreamEnd>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    answer
        .end_signal()
        .expect("the winner's stream keeps its signal")
        .on_end(move |end| record.lock().unwrap().push(end.clone()));
    seen
}

/// Waits until the server has nothing in flight: the cancellation of a dropped request
/// reaches it through the socket.
async fn settled(server: &MockServer) -> Counters {
    server.wait_until(|c| c.in_flight == 0).await
}

/// The leg whose head comes first wins, though its stream then runs for seconds and the
/// other leg would have had its whole answer in at 1 s: the race does not wait for a whole
/// answer. The other leg, still waiting for its head, is dropped and its connection closed.
#[tokio::test(start_paused = true)]
async fn a_race_is_won_at_the_first_head_and_the_other_leg_is_cancelled() {
    let whole_at_one_second = server(late_head(Duration::from_secs(1))).await;
    let trickling = server(slow_stream()).await;
    let race = RaceLayer::new()
        .record_winner(MarkResponse)
        .layer(vec![leg(&whole_at_one_second), leg(&trickling)]);

    let start = Instant::now();
    let mut answer = race.oneshot(ask()).await.unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(
        answer.answered().map(|a| (a.service, a.attempts)),
        Some((1, 2))
    );
    let ends = watch(&mut answer);

    let loser = settled(&whole_at_one_second).await;
    assert_eq!(
        (loser.requests, loser.completed, loser.cancelled),
        (1, 0, 1)
    );

    let mut chunks = 0;
    while let Some(item) = answer.get_mut().next().await {
        item.unwrap();
        chunks += 1;
    }
    assert!(chunks > 2, "{chunks}");
    assert!(
        start.elapsed() > Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    let ends = ends.lock().unwrap().clone();
    assert!(
        matches!(ends[..], [StreamEnd::Completed { usage: Some(_) }]),
        "{ends:?}"
    );
    assert_eq!(settled(&trickling).await.completed, 1);
}

/// A hedge's backup whose head comes first wins; the primary, still waiting for its head,
/// is dropped. The winner's stream, dropped by the caller after one chunk, ends as
/// `Dropped` and closes its connection.
#[tokio::test(start_paused = true)]
async fn a_hedge_is_won_at_the_first_head_and_a_dropped_winner_ends_as_dropped() {
    let primary = server(late_head(Duration::from_secs(2))).await;
    let backup = server(slow_stream()).await;
    let hedge = HedgeLayer::builder()
        .record_winner(MarkResponse)
        .delay(HedgeDelay::Fixed(Duration::from_millis(500)))
        .unlimited_budget()
        .build()
        .unwrap()
        .layer(vec![leg(&primary), leg(&backup)]);

    let start = Instant::now();
    let mut answer = hedge.oneshot(ask()).await.unwrap();
    assert_eq!(
        start.elapsed(),
        Duration::from_millis(500),
        "the backup's head"
    );
    assert_eq!(answer.answered().map(|a| a.service), Some(1));
    let ends = watch(&mut answer);
    let primary_seen = settled(&primary).await;
    assert_eq!((primary_seen.completed, primary_seen.cancelled), (0, 1));

    answer.get_mut().next().await.unwrap().unwrap();
    assert!(
        ends.lock().unwrap().is_empty(),
        "not over at its first chunk"
    );
    drop(answer);
    assert_eq!(*ends.lock().unwrap(), [StreamEnd::Dropped]);
    let backup_seen = settled(&backup).await;
    assert_eq!((backup_seen.completed, backup_seen.cancelled), (0, 1));
}

/// A stream that had won at its head and is then cut is the caller's error: the race does
/// not turn to the other leg (dropped at the head, never asked again), nor does a hedge with
/// failover send its backup.
#[tokio::test(start_paused = true)]
async fn a_stream_that_breaks_after_its_head_is_not_raced_or_hedged_again() {
    let cutting = || server(FaultPlan::healthy().fault(Fault::CutStream { after_chunks: 1 }, 1.0));

    // Race.
    let cut = cutting().await;
    let other = server(late_head(Duration::from_secs(1))).await;
    let race = RaceLayer::new()
        .record_winner(MarkResponse)
        .layer(vec![leg(&cut), leg(&other)]);
    let mut answer = race.oneshot(ask()).await.unwrap();
    assert_eq!(answer.answered().map(|a| a.service), Some(0));
    let ends = watch(&mut answer);
    let mut items = Vec::new();
    while let Some(item) = answer.get_mut().next().await {
        items.push(item);
    }
    let (last, before) = items.split_last().unwrap();
    assert!(before.iter().all(Result::is_ok), "{items:?}");
    assert_eq!(last.as_ref().unwrap_err().kind(), FailureKind::Transport);
    assert_eq!(
        *ends.lock().unwrap(),
        [StreamEnd::failed(FailureKind::Transport)]
    );
    let other_seen = settled(&other).await;
    assert_eq!(
        (
            other_seen.requests,
            other_seen.completed,
            other_seen.cancelled
        ),
        (1, 0, 1)
    );

    // Hedge with failover, over three legs: the primary is slow to its head, so the first
    // backup goes out at the hedge delay and wins at its head; the primary, still waiting
    // for its head, is cancelled then, not waited for. The winner's stream then breaks: the
    // caller gets that error, and the hedge is over: no failover (a failed leg would send
    // the next at once) and no further hedge (the next would go out one delay later).
    let slow = server(late_head(Duration::from_secs(2))).await;
    let cut = cutting().await;
    let spare = server(FaultPlan::healthy()).await;
    let hedge = HedgeLayer::builder()
        .record_winner(MarkResponse)
        .delay(HedgeDelay::Fixed(Duration::from_millis(500)))
        .max_extra_attempts(2)
        .unlimited_budget()
        .failover(true)
        .build()
        .unwrap()
        .layer(vec![leg(&slow), leg(&cut), leg(&spare)]);
    let start = Instant::now();
    let mut answer = hedge.oneshot(ask()).await.unwrap();
    assert_eq!(
        start.elapsed(),
        Duration::from_millis(500),
        "the backup's head, at the hedge delay"
    );
    assert_eq!(
        answer.answered().map(|a| (a.service, a.attempts)),
        Some((1, 2))
    );
    let ends = watch(&mut answer);
    let slow_seen = settled(&slow).await;
    assert_eq!(
        (slow_seen.requests, slow_seen.completed, slow_seen.cancelled),
        (1, 0, 1),
        "the primary was cancelled at the backup's head"
    );
    let mut items = Vec::new();
    while let Some(item) = answer.get_mut().next().await {
        items.push(item);
    }
    let (last, before) = items.split_last().unwrap();
    assert!(before.iter().all(Result::is_ok), "{items:?}");
    assert_eq!(last.as_ref().unwrap_err().kind(), FailureKind::Transport);
    assert_eq!(
        *ends.lock().unwrap(),
        [StreamEnd::failed(FailureKind::Transport)]
    );
    // Past the primary's head and several hedge delays: still two requests in all.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(spare.counters().requests, 0, "a third leg was sent");
    assert_eq!(cut.counters().requests, 1);
    assert_eq!(slow.counters().requests, 1);
}
