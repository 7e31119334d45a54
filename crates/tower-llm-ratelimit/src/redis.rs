//! The requests and tokens quotas shared across instances through Redis (feature `redis`).
//!
//! One Lua script does the whole admission atomically on the Redis server, with the same
//! algorithm as the in-memory budget (a GCRA under a 60-slot sliding-window cap) and with
//! Redis's own clock (`TIME`), so instances with skewed clocks still agree. A second script
//! reconciles a call's tokens once its usage is known. Keys expire on their own once their
//! window has passed.
//!
//! Concurrency, spacing, pauses and the server's headers stay local to each instance: they
//! are about this instance's connections and the answers it saw. With
//! [`AdaptiveConcurrency::shared`](crate::AdaptiveConcurrency::shared), the overloads that
//! lowered an instance's adaptive limit are recorded in the key's hash (`ov`: an epoch on
//! Redis's clock, `oi`: the instance that wrote it), and each instance learns the latest one
//! from the acquire script's reply, or, without a quota in Redis, from a background read at
//! most every [`OVERLOAD_READ_PERIOD`] per key.
//!
//! Waiting is still local and FIFO: the first call in an instance's queue asks Redis, and
//! when Redis says "not yet, in 300 ms" it sleeps that long and asks again. Each call costs
//! one round trip to Redis; the request to Redis is bounded by a timeout, after which the
//! [`BackendFailure`] choice applies.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::Script;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::adaptive::OverloadNews;
use crate::config::{BackendFailure, Config};
use crate::key_state::KeyState;
use crate::observe::SharedOp;
use crate::quota::{Charge, Quota, SLOTS_PER_WINDOW};
use crate::ticket::{RemoteCheck, RemoteVerdict};

/// The Lua function both readers of the overload news share: the epoch and writer of the
/// latest overload if it is fresher than `keep` microseconds, else `0, 0`.
macro_rules! overload_news {
    () => {
        r#"
local function news(ov, oi, now, keep)
  ov = tonumber(ov)
  if keep > 0 and ov and ov + keep > now then return ov, tonumber(oi) or 0 end
  return 0, 0
end
"#
    };
}

/// Per dimension (`r` requests, `t` tokens) the hash holds `<d>tat` (the GCRA's theoretical
/// arrival time), and per slot `<d>a<epoch>` (amount) and `<d>l<epoch>` (time of its latest
/// charge). Times are microseconds of the Redis clock.
///
/// `ARGV[9]` is how long an overload stays news, in microseconds (0: overloads are not
/// shared); the reply ends with the latest fresh overload's epoch and writer (0, 0: none).
const ACQUIRE: &str = concat!(
    overload_news!(),
    r#"
local key = KEYS[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local slots = tonumber(ARGV[8])
local keep = tonumber(ARGV[9])
local dims = {}
for i = 0, 1 do
  local limit = tonumber(ARGV[1 + i * 3])
  if limit > 0 then
    local units = 1
    if i == 1 then units = tonumber(ARGV[7]) end
    local window = tonumber(ARGV[2 + i * 3])
    dims[#dims + 1] = {p = (i == 0) and 'r' or 't', limit = limit, window = window,
      burst = tonumber(ARGV[3 + i * 3]), units = units, slot = math.ceil(window / slots)}
  end
end
local h = redis.call('HGETALL', key)
local f = {}
for i = 1, #h, 2 do f[h[i]] = tonumber(h[i + 1]) end
local function emission(d, c) return math.ceil(c * d.window / d.limit) end
local wait = 0
local stale = {}
local longest = 0
for _, d in ipairs(dims) do
  if d.window > longest then longest = d.window end
  local tat = f[d.p .. 'tat'] or 0
  local base = math.max(tat, now)
  local ready
  if d.units <= d.burst then
    ready = math.max(base + emission(d, d.units) - emission(d, d.burst), now)
  else
    ready = base
  end
  local live = {}
  local used = 0
  for name, amount in pairs(f) do
    local epoch = string.match(name, '^' .. d.p .. 'a(%d+)$')
    if epoch then
      local last = f[d.p .. 'l' .. epoch] or 0
      if amount > 0 and last + d.window > now then
        used = used + amount
        live[#live + 1] = {epoch = tonumber(epoch), amount = amount, expiry = last + d.window}
      else
        stale[#stale + 1] = d.p .. 'a' .. epoch
        stale[#stale + 1] = d.p .. 'l' .. epoch
      end
    end
  end
  if used + d.units > d.limit then
    table.sort(live, function(a, b) return a.epoch < b.epoch end)
    local need = used + d.units - d.limit
    for _, s in ipairs(live) do
      ready = math.max(ready, s.expiry)
      need = need - s.amount
      if need <= 0 then break end
    end
  end
  wait = math.max(wait, ready - now)
end
if #stale > 0 then redis.call('HDEL', key, unpack(stale)) end
local ov, oi = news(f['ov'], f['oi'], now, keep)
if wait > 0 then return {1, wait, ov, oi} end
local token_epoch = -1
local horizon = 0
for _, d in ipairs(dims) do
  local tat = math.max(f[d.p .. 'tat'] or 0, now) + emission(d, d.units)
  local epoch = math.floor(now / d.slot)
  local amount = (f[d.p .. 'a' .. epoch] or 0) + d.units
  redis.call('HSET', key, d.p .. 'tat', tat, d.p .. 'a' .. epoch, amount, d.p .. 'l' .. epoch, now)
  if d.p == 't' then token_epoch = epoch end
  horizon = math.max(horizon, tat - now)
end
local expiry = math.ceil((horizon + longest * 2) / 1000) + 1000
-- Keep a fresh overload as long as it is news, whatever the quotas' windows.
if ov > 0 then expiry = math.max(expiry, math.ceil((ov + keep - now) / 1000)) end
redis.call('PEXPIRE', key, expiry)
return {0, token_epoch, ov, oi}
"#
);

/// Records an overload: the epoch grows by at least one, is never behind Redis's clock (so it
/// keeps growing if the hash expired meanwhile), and names its writer (`ARGV[1]`). The hash
/// is kept at least `ARGV[2]` microseconds.
const PUBLISH_OVERLOAD: &str = r#"
local key = KEYS[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local ov = math.max((tonumber(redis.call('HGET', key, 'ov')) or 0) + 1, now)
redis.call('HSET', key, 'ov', ov, 'oi', ARGV[1])
local keep = math.ceil(tonumber(ARGV[2]) / 1000)
if redis.call('PTTL', key) < keep then redis.call('PEXPIRE', key, keep) end
return ov
"#;

/// Reads the latest fresh overload of a key (`ARGV[1]`: how long it stays news, in
/// microseconds).
const READ_OVERLOAD: &str = concat!(
    overload_news!(),
    r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local v = redis.call('HMGET', KEYS[1], 'ov', 'oi')
local ov, oi = news(v[1], v[2], now, tonumber(ARGV[1]))
return {ov, oi}
"#
);

/// Adds `delta` (negative: a refund) to the token charge made in slot `epoch`.
const RECONCILE: &str = r#"
local key = KEYS[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local epoch = ARGV[3]
local delta = tonumber(ARGV[4])
if redis.call('EXISTS', key) == 0 then return 0 end
local e = math.ceil(math.abs(delta) * window / limit)
local tat = tonumber(redis.call('HGET', key, 'ttat') or '0')
if delta < 0 then
  if tat > now then tat = math.max(tat - e, now) end
else
  tat = math.max(tat, now) + e
end
redis.call('HSET', key, 'ttat', tat)
local amount = tonumber(redis.call('HGET', key, 'ta' .. epoch) or '-1')
local last = tonumber(redis.call('HGET', key, 'tl' .. epoch) or '0')
if amount >= 0 and last + window > now then
  redis.call('HSET', key, 'ta' .. epoch, math.max(0, amount + delta))
end
return 1
"#;

static ACQUIRE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(ACQUIRE));
static RECONCILE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(RECONCILE));
static PUBLISH_OVERLOAD_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(PUBLISH_OVERLOAD));
static READ_OVERLOAD_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(READ_OVERLOAD));

/// How long an overload recorded by one instance stays news to the others: one that has not
/// reached an instance by then belongs to a past crowding.
const OVERLOAD_NEWS: Duration = Duration::from_secs(10);

/// Without a quota in Redis, how often at most a key reads the shared overloads (when a call
/// starts, in the background).
pub(crate) const OVERLOAD_READ_PERIOD: Duration = Duration::from_millis(100);

/// Where and how a limiter keeps its quotas in Redis. Cloning shares the connection.
///
/// ```no_run
/// use std::time::Duration;
/// use tower_llm_ratelimit::{BackendFailure, Quota, RateLimitLayer, RedisBackend};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let backend = RedisBackend::connect("redis://127.0.0.1:6379")
///     .await?
///     .namespace("myapp:openai")
///     .timeout(Duration::from_millis(50))
///     .on_failure(BackendFailure::Closed);
/// let layer = RateLimitLayer::builder()
///     .requests(Quota::per_minute(500))
///     .tokens(Quota::per_minute(200_000))
///     .redis(backend)
///     .build()?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisBackend {
    connection: ConnectionManager,
    namespace: Arc<str>,
    timeout: Duration,
    failure: BackendFailure,
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackend")
            .field("namespace", &self.namespace)
            .field("timeout", &self.timeout)
            .field("failure", &self.failure)
            .finish_non_exhaustive()
    }
}

impl RedisBackend {
    /// Connects to the Redis at `url` (`redis://host:port/db`). The connection reconnects
    /// by itself after an outage.
    pub async fn connect(url: &str) -> Result<Self, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_secs(1))
            .set_response_timeout(Duration::from_secs(1))
            .set_number_of_retries(2)
            .set_max_delay(1_000);
        let connection = ConnectionManager::new_with_config(client, config).await?;
        Ok(RedisBackend::from_connection(connection))
    }

    /// Uses an existing connection.
    pub fn from_connection(connection: ConnectionManager) -> Self {
        RedisBackend {
            connection,
            namespace: Arc::from("tower-llm-ratelimit"),
            timeout: Duration::from_millis(100),
            failure: BackendFailure::default(),
        }
    }

    /// The prefix of every key (default `tower-llm-ratelimit`): limiters with the same
    /// namespace (and key) share a budget, limiters with different ones never see each
    /// other's.
    pub fn namespace(mut self, namespace: impl Into<Arc<str>>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// The longest a call waits on Redis before [`BackendFailure`] applies (default 100 ms).
    /// Zero is refused when the limiter is built.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// What to do when Redis cannot be reached in time (default [`BackendFailure::Open`]).
    pub fn on_failure(mut self, failure: BackendFailure) -> Self {
        self.failure = failure;
        self
    }

    /// What is done when Redis cannot be reached in time (set by
    /// [`on_failure`](Self::on_failure)).
    pub fn failure_mode(&self) -> BackendFailure {
        self.failure
    }

    /// The former name of [`namespace`](Self::namespace).
    #[deprecated(
        since = "0.1.0",
        note = "renamed `namespace`, as in tower-llm-dedup's backend"
    )]
    pub fn with_prefix(self, prefix: impl Into<Arc<str>>) -> Self {
        self.namespace(prefix)
    }

    /// The former name of [`timeout`](Self::timeout).
    #[deprecated(
        since = "0.1.0",
        note = "renamed `timeout`, as in tower-llm-dedup's backend"
    )]
    pub fn with_timeout(self, timeout: Duration) -> Self {
        self.timeout(timeout)
    }

    /// The former name of [`on_failure`](Self::on_failure).
    #[deprecated(
        since = "0.1.0",
        note = "renamed `on_failure`, like tower-llm-dedup's `on_error`"
    )]
    pub fn with_failure_mode(self, failure: BackendFailure) -> Self {
        self.on_failure(failure)
    }

    /// A zero timeout would find Redis unreachable on every call.
    pub(crate) fn has_zero_timeout(&self) -> bool {
        self.timeout.is_zero()
    }

    fn key(&self, name: &str) -> String {
        format!("{}:{}", self.namespace, name)
    }

    /// Asks Redis to admit one request of `cost` tokens under key `name`.
    pub(crate) fn acquire(&self, config: &Config, name: String, cost: u64) -> RemoteCheck {
        let mut connection = self.connection.clone();
        let key = self.key(&name);
        let timeout = self.timeout;
        let dim = |q: Option<Quota>| match q {
            Some(q) => (q.limit(), micros(q.window()), q.burst()),
            None => (0, 0, 0),
        };
        let (requests, tokens) = (dim(config.requests), dim(config.tokens));
        let keep = if config.adaptive.as_ref().is_some_and(|a| a.shared) {
            micros(OVERLOAD_NEWS)
        } else {
            0
        };
        Box::pin(async move {
            let mut call = ACQUIRE_SCRIPT.key(key);
            call.arg(requests.0)
                .arg(requests.1)
                .arg(requests.2)
                .arg(tokens.0)
                .arg(tokens.1)
                .arg(tokens.2)
                .arg(cost)
                .arg(SLOTS_PER_WINDOW)
                .arg(keep);
            let answer =
                tokio::time::timeout(timeout, call.invoke_async::<Vec<i64>>(&mut connection)).await;
            match answer {
                Ok(Ok(v)) => match v.as_slice() {
                    [0, epoch, ov, oi] => RemoteVerdict::Admitted(
                        u64::try_from(*epoch).ok().map(|epoch| Charge {
                            epoch,
                            amount: cost,
                        }),
                        news(*ov, *oi),
                    ),
                    [1, wait, ov, oi] if *wait > 0 => {
                        RemoteVerdict::Wait(Duration::from_micros(*wait as u64), news(*ov, *oi))
                    }
                    _ => RemoteVerdict::Failed,
                },
                _ => RemoteVerdict::Failed,
            }
        })
    }

    /// Adds `delta` tokens (negative: a refund) to an earlier charge, in the background.
    pub(crate) fn reconcile(&self, config: &Config, name: &str, charge: Charge, delta: i128) {
        let Some(quota) = config.tokens else {
            return;
        };
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut connection = self.connection.clone();
        let key = self.key(name);
        let timeout = self.timeout;
        let delta = i64::try_from(delta).unwrap_or(if delta < 0 { i64::MIN } else { i64::MAX });
        handle.spawn(async move {
            let mut call = RECONCILE_SCRIPT.key(key);
            call.arg(quota.limit())
                .arg(micros(quota.window()))
                .arg(charge.epoch)
                .arg(delta);
            // Best effort: a lost reconciliation leaves the estimate in place, which only
            // errs on the cautious side when the call used less.
            let _ = tokio::time::timeout(timeout, call.invoke_async::<i64>(&mut connection)).await;
        });
    }
}

/// The overload news in a script's reply (an epoch of 0, or a negative number from a broken
/// server: none).
fn news(epoch: i64, writer: i64) -> Option<OverloadNews> {
    let epoch = u64::try_from(epoch).ok().filter(|e| *e > 0)?;
    Some(OverloadNews {
        epoch,
        writer: u64::try_from(writer).unwrap_or(0),
    })
}

/// Records in Redis, in the background, that this instance backed off for an overload under
/// `key`. A failure is counted and otherwise ignored: the local limit has done its part.
pub(crate) fn publish_overload(key: &Arc<KeyState>) {
    let limiter = &key.limiter;
    let (Some(backend), Some(name)) = (&limiter.config.redis, &key.remote_key) else {
        return;
    };
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        limiter.observe.shared_failed(SharedOp::Publish);
        return;
    };
    let mut connection = backend.connection.clone();
    let timeout = backend.timeout;
    let mut call = PUBLISH_OVERLOAD_SCRIPT.key(backend.key(name));
    call.arg(limiter.instance).arg(micros(OVERLOAD_NEWS));
    let limiter = Arc::clone(limiter);
    let keyed = key.keyed();
    handle.spawn(async move {
        let answer = tokio::time::timeout(timeout, call.invoke_async::<i64>(&mut connection)).await;
        match answer {
            Ok(Ok(_)) => limiter.observe.overload_published(keyed),
            _ => limiter.observe.shared_failed(SharedOp::Publish),
        }
    });
}

/// Without a quota round trip, reads `key`'s latest shared overload in the background when a
/// call starts at `now`, at most every [`OVERLOAD_READ_PERIOD`] and one read at a time; the
/// call does not wait for it.
#[inline]
pub(crate) fn read_overloads(key: &Arc<KeyState>, now: u64) {
    let next = key.next_overload_read.load(Ordering::Relaxed);
    if now < next {
        return;
    }
    read_overloads_now(key, next);
}

#[cold]
#[inline(never)]
fn read_overloads_now(key: &Arc<KeyState>, next: u64) {
    let limiter = &key.limiter;
    let (Some(backend), Some(name)) = (&limiter.config.redis, &key.remote_key) else {
        return;
    };
    // One caller wins the read; the others go on.
    if key
        .next_overload_read
        .compare_exchange(next, u64::MAX, Ordering::AcqRel, Ordering::Relaxed)
        .is_err()
    {
        return;
    }
    let period = u64::try_from(OVERLOAD_READ_PERIOD.as_nanos()).unwrap_or(u64::MAX / 4);
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        key.next_overload_read
            .store(limiter.now().saturating_add(period), Ordering::Release);
        limiter.observe.shared_failed(SharedOp::Read);
        return;
    };
    let mut connection = backend.connection.clone();
    let timeout = backend.timeout;
    let mut call = READ_OVERLOAD_SCRIPT.key(backend.key(name));
    call.arg(micros(OVERLOAD_NEWS));
    // However the read ends (even with its runtime shutting down), the next may come.
    struct Reading(Arc<KeyState>, u64);
    impl Drop for Reading {
        fn drop(&mut self) {
            let next = self.0.limiter.now().saturating_add(self.1);
            self.0.next_overload_read.store(next, Ordering::Release);
        }
    }
    let reading = Reading(Arc::clone(key), period);
    handle.spawn(async move {
        let answer =
            tokio::time::timeout(timeout, call.invoke_async::<Vec<i64>>(&mut connection)).await;
        let key = &reading.0;
        match answer {
            Ok(Ok(v)) if v.len() == 2 => key.learn_overload(news(v[0], v[1])),
            _ => key.limiter.observe.shared_failed(SharedOp::Read),
        }
    });
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX / 4)
}
