//! Property tests of the retry state machine: on random scripts of upstream outcomes, retry
//! hints, attempt limits, deadlines and caller drops, the layer makes exactly the calls, waits
//! exactly the time and returns exactly the result that a plain model of the rules predicts.

#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proptest::prelude::*;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_llm_core::BoxError;
use tower_llm_retry::{Backoff, Jitter, RetryLayer};

#[derive(Clone, Copy, Debug)]
enum Answer {
    Ok,
    BadRequest,
    Unavailable,
    /// 429 with `retry-after` in whole seconds.
    RateLimited(u64),
    /// A transport error.
    Reset,
}

impl Answer {
    fn respond(self) -> Result<http::Response<()>, BoxError> {
        let response = |status: u16| http::Response::builder().status(status).body(());
        Ok(match self {
            Answer::Ok => response(200)?,
            Answer::BadRequest => response(400)?,
            Answer::Unavailable => response(503)?,
            Answer::RateLimited(secs) => http::Response::builder()
                .status(429)
                .header("retry-after", secs.to_string())
                .body(())?,
            Answer::Reset => {
                return Err(Box::new(std::io::Error::from(
                    std::io::ErrorKind::ConnectionReset,
                )));
            }
        })
    }

    fn retryable(self) -> bool {
        !matches!(self, Answer::Ok | Answer::BadRequest)
    }

    fn hint(self) -> Option<Duration> {
        match self {
            Answer::RateLimited(secs) => Some(Duration::from_secs(secs)),
            _ => None,
        }
    }

    /// What the caller sees: a status, or 0 for an error.
    fn seen(self) -> u16 {
        match self {
            Answer::Ok => 200,
            Answer::BadRequest => 400,
            Answer::Unavailable => 503,
            Answer::RateLimited(_) => 429,
            Answer::Reset => 0,
        }
    }
}

fn answer() -> impl Strategy<Value = Answer> {
    prop_oneof![
        3 => Just(Answer::Ok),
        1 => Just(Answer::BadRequest),
        3 => Just(Answer::Unavailable),
        2 => (0u64..8).prop_map(Answer::RateLimited),
        2 => Just(Answer::Reset),
    ]
}

const BACKOFF: Duration = Duration::from_millis(300);
const MAX_HINT: Duration = Duration::from_secs(5);

/// The rules, written plainly: the times at which attempts start, and the final answer.
fn model(
    script: &[Answer],
    max_attempts: usize,
    deadline: Option<Duration>,
) -> (Vec<Duration>, u16) {
    let mut starts = vec![Duration::ZERO];
    let mut now = Duration::ZERO;
    for (i, answer) in script.iter().enumerate() {
        let attempt = i + 1;
        let give_up = !answer.retryable()
            || attempt >= max_attempts
            || answer.hint().is_some_and(|h| h > MAX_HINT);
        if give_up {
            return (starts, answer.seen());
        }
        let delay = answer.hint().map_or(BACKOFF, |h| h.max(BACKOFF));
        if deadline.is_some_and(|d| now + delay >= d) {
            return (starts, answer.seen());
        }
        now += delay;
        starts.push(now);
    }
    unreachable!("scripts end with Ok")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn layer_follows_the_rules(
        mut script in proptest::collection::vec(answer(), 0..8),
        max_attempts in 1usize..7,
        deadline_ms in proptest::option::of(1u64..20_000),
        drop_after_ms in proptest::option::of(0u64..20_000),
    ) {
        script.push(Answer::Ok);
        let deadline = deadline_ms.map(Duration::from_millis);
        let (starts, expected) = model(&script, max_attempts, deadline);
        // Drop half a millisecond off any attempt time, so that "before" is unambiguous.
        let drop_after = drop_after_ms.map(|ms| Duration::from_micros(ms * 1000 + 500));

        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(async move {
            let queue = Arc::new(Mutex::new(script.iter().copied().collect::<VecDeque<_>>()));
            let calls = Arc::new(Mutex::new(Vec::new()));
            let start = Instant::now();
            let upstream = service_fn({
                let calls = calls.clone();
                move |_: ()| {
                    calls.lock().unwrap().push(start.elapsed());
                    let answer = queue.lock().unwrap().pop_front().unwrap_or(Answer::Ok);
                    std::future::ready(answer.respond())
                }
            });
            let mut builder = RetryLayer::builder()
                .no_budget()
                .max_attempts(max_attempts)
                .backoff(Backoff::fixed(BACKOFF))
                .jitter(Jitter::None)
                .max_retry_after(MAX_HINT);
            if let Some(deadline) = deadline {
                builder = builder.deadline(deadline);
            }
            let mut service = builder.build().unwrap().layer(upstream);
            let future = service.ready().await.unwrap().call(());
            let outcome = match drop_after {
                Some(after) => tokio::time::timeout(after, future).await.ok(),
                None => Some(future.await),
            };
            // Anything left running would show up as a late call.
            tokio::time::sleep(Duration::from_secs(600)).await;
            let calls = calls.lock().unwrap().clone();
            match outcome {
                Some(result) => {
                    let seen = result.map_or(0, |r| r.status().as_u16());
                    prop_assert_eq!(seen, expected);
                    prop_assert_eq!(&calls, &starts);
                    prop_assert_eq!(start.elapsed(), Duration::from_secs(600) + *starts.last().unwrap());
                }
                None => {
                    let after = drop_after.unwrap();
                    let made: Vec<Duration> = starts.iter().copied().filter(|s| *s < after).collect();
                    prop_assert_eq!(&calls, &made, "calls after the caller dropped");
                }
            }
            Ok(())
        })?;
    }
}
