//! The requests and tokens quotas shared across instances through Redis (feature `redis`).
//!
//! One Lua script does the whole admission atomically on the Redis server, with the same
//! algorithm as the in-memory budget (a GCRA under a 60-slot sliding-window cap) and with
//! Redis's own clock (`TIME`), so instances with skewed clocks still agree. A second script
//! reconciles a call's tokens once its usage is known. Keys expire on their own once their
//! window has passed.
//!
//! Concurrency, spacing, pauses and the server's headers stay local to each instance: they
//! are about this instance's connections and the answers it saw.
//!
//! Waiting is still local and FIFO: the first call in an instance's queue asks Redis, and
//! when Redis says "not yet, in 300 ms" it sleeps that long and asks again. Each call costs
//! one round trip to Redis; the request to Redis is bounded by a timeout, after which the
//! [`BackendFailure`] choice applies.

use std::fmt;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::Script;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::config::{BackendFailure, Config};
use crate::quota::{Charge, Quota, SLOTS_PER_WINDOW};
use crate::ticket::{RemoteCheck, RemoteVerdict};

/// Per dimension (`r` requests, `t` tokens) the hash holds `<d>tat` (the GCRA's theoretical
/// arrival time), and per slot `<d>a<epoch>` (amount) and `<d>l<epoch>` (time of its latest
/// charge). Times are microseconds of the Redis clock.
const ACQUIRE: &str = r#"
local key = KEYS[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local slots = tonumber(ARGV[8])
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
if wait > 0 then return {1, wait} end
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
redis.call('PEXPIRE', key, math.ceil((horizon + longest * 2) / 1000) + 1000)
return {0, token_epoch}
"#;

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

/// Where and how a limiter keeps its quotas in Redis. Cloning shares the connection.
///
/// ```no_run
/// use std::time::Duration;
/// use tower_llm_ratelimit::{BackendFailure, Quota, RateLimitLayer, RedisBackend};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let backend = RedisBackend::connect("redis://127.0.0.1:6379")
///     .await?
///     .with_prefix("myapp:openai")
///     .with_timeout(Duration::from_millis(50))
///     .with_failure_mode(BackendFailure::Closed);
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
    prefix: Arc<str>,
    timeout: Duration,
    failure: BackendFailure,
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackend")
            .field("prefix", &self.prefix)
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
            prefix: Arc::from("tower-llm-ratelimit"),
            timeout: Duration::from_millis(100),
            failure: BackendFailure::default(),
        }
    }

    /// Names the budget: limiters with the same prefix (and key) share it. Default
    /// `tower-llm-ratelimit`.
    pub fn with_prefix(mut self, prefix: impl Into<Arc<str>>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long to wait for Redis before [`BackendFailure`] applies. Default 100 ms. Zero is
    /// refused when the limiter is built.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// What to do when Redis cannot be reached in time. Default [`BackendFailure::Open`].
    pub fn with_failure_mode(mut self, failure: BackendFailure) -> Self {
        self.failure = failure;
        self
    }

    /// What is done when Redis cannot be reached in time.
    pub fn failure_mode(&self) -> BackendFailure {
        self.failure
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    fn key(&self, name: &str) -> String {
        format!("{}:{}", self.prefix, name)
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
        Box::pin(async move {
            let mut call = ACQUIRE_SCRIPT.key(key);
            call.arg(requests.0)
                .arg(requests.1)
                .arg(requests.2)
                .arg(tokens.0)
                .arg(tokens.1)
                .arg(tokens.2)
                .arg(cost)
                .arg(SLOTS_PER_WINDOW);
            let answer =
                tokio::time::timeout(timeout, call.invoke_async::<Vec<i64>>(&mut connection)).await;
            match answer {
                Ok(Ok(v)) => match v.as_slice() {
                    [0, epoch] => {
                        RemoteVerdict::Admitted(u64::try_from(*epoch).ok().map(|epoch| Charge {
                            epoch,
                            amount: cost,
                        }))
                    }
                    [1, wait] if *wait > 0 => {
                        RemoteVerdict::Wait(Duration::from_micros(*wait as u64))
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

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX / 4)
}
