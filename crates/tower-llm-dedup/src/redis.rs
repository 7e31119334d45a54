//! A cache shared by several instances through Redis (feature `redis`).
//!
//! [`RedisBackend`] sits behind the in-memory cache: on a memory miss the leading caller asks
//! Redis (bounded by a short timeout, 100 ms by default) before calling the inner service, and
//! a successful, cacheable answer is written to Redis in the background with the entry's TTL
//! (a TTL longer than Redis accepts, such as `Duration::MAX`, is clamped to the longest it
//! accepts).
//! Values are encoded by a [`Codec`] ([`JsonCodec`] for serde types, [`HttpResponseCodec`] for
//! `http::Response<Bytes>`); keys are `{namespace}:{fingerprint}`.
//!
//! Redis never fails or stalls a request: an error or a timeout counts
//! `tower_llm_dedup_remote_errors_total` and the request goes on to the inner service. After a
//! failure Redis is left alone for a cool-down (one second by default) so that an outage costs
//! one timeout, not one per request. Instances that share a cache must share the fingerprint
//! key ([`FingerprintKey::from_secret`](tower_llm_core::FingerprintKey::from_secret)).
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use bytes::Bytes;
//! use tower_llm_core::FingerprintKey;
//! use tower_llm_dedup::DedupLayer;
//! use tower_llm_dedup::redis::{HttpResponseCodec, RedisBackend};
//!
//! # fn main() -> Result<(), tower_llm_core::BoxError> {
//! let backend = RedisBackend::new("redis://127.0.0.1:6379/", HttpResponseCodec)?
//!     .namespace("chat-cache")
//!     .timeout(Duration::from_millis(50));
//! let layer = DedupLayer::<http::Response<Bytes>>::builder()
//!     .fingerprint_key(FingerprintKey::from_secret(b"32 random bytes shared by every instance"))
//!     .redis(backend)
//!     .build()?;
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::OnceCell;
use tokio::time::Instant;
use tower_llm_core::{BoxError, RequestKey};

use crate::error::ConfigError;
use crate::observe::{Observe, RemoteFailure, RemoteOp};
use crate::remote::{Lookup, Remote};

/// The default Redis timeout, for connecting and for each command.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(100);

/// The default cool-down after a Redis failure, during which Redis is not asked.
pub const DEFAULT_COOL_DOWN: Duration = Duration::from_secs(1);

/// The default key namespace.
pub const DEFAULT_NAMESPACE: &str = "tower-llm-dedup";

/// Turns a cached value into bytes for Redis and back.
pub trait Codec<V>: Send + Sync + 'static {
    /// The value's bytes.
    fn encode(&self, value: &V) -> Result<Vec<u8>, BoxError>;
    /// The value from its bytes. Bytes from elsewhere (another version, a corrupt entry) give
    /// an error, never a panic; the entry is then treated as a miss.
    fn decode(&self, bytes: &[u8]) -> Result<V, BoxError>;
}

/// Values as JSON with serde.
#[derive(Clone, Copy, Debug, Default)]
pub struct JsonCodec;

impl<V> Codec<V> for JsonCodec
where
    V: serde::Serialize + serde::de::DeserializeOwned,
{
    fn encode(&self, value: &V) -> Result<Vec<u8>, BoxError> {
        Ok(serde_json::to_vec(value)?)
    }

    fn decode(&self, bytes: &[u8]) -> Result<V, BoxError> {
        Ok(serde_json::from_slice(bytes)?)
    }
}

/// `http::Response<Bytes>` as status, headers and body in a small binary frame.
#[derive(Clone, Copy, Debug, Default)]
pub struct HttpResponseCodec;

const HTTP_FRAME_VERSION: u8 = 1;

impl Codec<http::Response<Bytes>> for HttpResponseCodec {
    fn encode(&self, value: &http::Response<Bytes>) -> Result<Vec<u8>, BoxError> {
        let mut out = Vec::with_capacity(value.body().len() + 64);
        out.push(HTTP_FRAME_VERSION);
        out.extend_from_slice(&value.status().as_u16().to_be_bytes());
        out.extend_from_slice(&u32::try_from(value.headers().len())?.to_be_bytes());
        for (name, v) in value.headers() {
            for part in [name.as_str().as_bytes(), v.as_bytes()] {
                out.extend_from_slice(&u32::try_from(part.len())?.to_be_bytes());
                out.extend_from_slice(part);
            }
        }
        out.extend_from_slice(value.body());
        Ok(out)
    }

    fn decode(&self, bytes: &[u8]) -> Result<http::Response<Bytes>, BoxError> {
        let mut reader = Reader { bytes };
        if reader.take(1)? != [HTTP_FRAME_VERSION] {
            return Err("unknown http response frame version".into());
        }
        let status = u16::from_be_bytes(reader.array()?);
        let count = u32::from_be_bytes(reader.array()?);
        let mut builder = http::Response::builder().status(status);
        for _ in 0..count {
            let len = u32::from_be_bytes(reader.array()?) as usize;
            let name = http::HeaderName::from_bytes(reader.take(len)?)?;
            let len = u32::from_be_bytes(reader.array()?) as usize;
            let value = http::HeaderValue::from_bytes(reader.take(len)?)?;
            builder = builder.header(name, value);
        }
        Ok(builder.body(Bytes::copy_from_slice(reader.bytes))?)
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], BoxError> {
        if self.bytes.len() < n {
            return Err("truncated http response frame".into());
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], BoxError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
}

struct Inner<V> {
    client: redis::Client,
    connection: OnceCell<ConnectionManager>,
    namespace: String,
    timeout: Duration,
    cool_down: Duration,
    down_until: Mutex<Option<Instant>>,
    codec: Arc<dyn Codec<V>>,
}

impl<V> Inner<V> {
    fn key(&self, key: RequestKey) -> String {
        format!("{}:{key}", self.namespace)
    }

    fn is_cooling_down(&self) -> bool {
        let down = self
            .down_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        down.is_some_and(|until| Instant::now() < until)
    }

    fn mark_down(&self) {
        let now = Instant::now();
        // A cool-down too long to add to the clock (`Duration::MAX`: "never again") must not
        // panic: the panic would reach every caller sharing the call, the opposite of
        // "Redis never fails a request". A century is never enough.
        let until = now
            .checked_add(self.cool_down)
            .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600));
        *self
            .down_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(until);
    }

    async fn connection(&self) -> Result<ConnectionManager, BoxError> {
        let connection = self
            .connection
            .get_or_try_init(|| {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(self.timeout)
                    .set_response_timeout(self.timeout)
                    .set_number_of_retries(1);
                ConnectionManager::new_with_config(self.client.clone(), config)
            })
            .await?;
        Ok(connection.clone())
    }

    /// Runs one Redis operation within the timeout; a failure starts the cool-down. The
    /// error itself is dropped: only its kind is reported, never text that could carry a key.
    async fn bounded<T>(
        &self,
        op: impl Future<Output = Result<T, BoxError>>,
    ) -> Result<T, RemoteFailure> {
        let result = match tokio::time::timeout(self.timeout, op).await {
            Ok(result) => result.map_err(|_| RemoteFailure::Error),
            Err(_) => Err(RemoteFailure::Timeout),
        };
        if result.is_err() {
            self.mark_down();
        }
        result
    }
}

/// Redis refuses an expiry whose absolute time (its clock, in milliseconds since the Unix
/// epoch, plus the TTL) passes `i64::MAX`; a day of margin covers its clock running ahead.
const REDIS_CLOCK_MARGIN_MS: u64 = 24 * 3600 * 1000;

/// `ttl` in whole milliseconds (at least one), clamped to the longest TTL Redis accepts at
/// `now`, so that an answer kept "for ever" in memory is kept as long as Redis can in Redis,
/// not refused by it.
fn redis_ttl_millis(ttl: Duration, now: SystemTime) -> u64 {
    let now_ms = now.duration_since(UNIX_EPOCH).map_or(0, |since| {
        u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
    });
    let longest = (i64::MAX as u64)
        .saturating_sub(now_ms)
        .saturating_sub(REDIS_CLOCK_MARGIN_MS);
    u64::try_from(ttl.as_millis())
        .unwrap_or(u64::MAX)
        .clamp(1, longest.max(1))
}

/// A Redis cache shared by several instances; give it to
/// [`DedupBuilder::redis`](crate::DedupBuilder::redis). See the [module docs](self).
pub struct RedisBackend<V> {
    inner: Arc<Inner<V>>,
    _value: PhantomData<fn() -> V>,
}

impl<V> Clone for RedisBackend<V> {
    fn clone(&self) -> Self {
        RedisBackend {
            inner: self.inner.clone(),
            _value: PhantomData,
        }
    }
}

impl<V> fmt::Debug for RedisBackend<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackend")
            .field("namespace", &self.inner.namespace)
            .field("timeout", &self.inner.timeout)
            .field("cool_down", &self.inner.cool_down)
            .finish_non_exhaustive()
    }
}

impl<V: Send + Sync + 'static> RedisBackend<V> {
    /// A backend for the Redis at `url` (`redis://host:port/db`), encoding values with
    /// `codec`. Nothing connects until the first request; only a malformed URL fails here.
    pub fn new(url: &str, codec: impl Codec<V>) -> Result<Self, BoxError> {
        Ok(RedisBackend {
            inner: Arc::new(Inner {
                client: redis::Client::open(url)?,
                connection: OnceCell::new(),
                namespace: DEFAULT_NAMESPACE.to_owned(),
                timeout: DEFAULT_TIMEOUT,
                cool_down: DEFAULT_COOL_DOWN,
                down_until: Mutex::new(None),
                codec: Arc::new(codec),
            }),
            _value: PhantomData,
        })
    }

    /// A backend encoding values as JSON ([`JsonCodec`]), the default codec.
    pub fn json(url: &str) -> Result<Self, BoxError>
    where
        V: serde::Serialize + serde::de::DeserializeOwned,
    {
        Self::new(url, JsonCodec)
    }

    fn with(self, edit: impl FnOnce(&mut Inner<V>)) -> Self {
        let mut inner = match Arc::try_unwrap(self.inner) {
            Ok(inner) => inner,
            // Shared already (cloned before configuring): configure a copy.
            Err(shared) => Inner {
                client: shared.client.clone(),
                connection: OnceCell::new(),
                namespace: shared.namespace.clone(),
                timeout: shared.timeout,
                cool_down: shared.cool_down,
                down_until: Mutex::new(None),
                codec: shared.codec.clone(),
            },
        };
        edit(&mut inner);
        RedisBackend {
            inner: Arc::new(inner),
            _value: PhantomData,
        }
    }

    /// The prefix of every key (default [`DEFAULT_NAMESPACE`]): caches with different
    /// namespaces never see each other's entries.
    pub fn namespace(self, namespace: impl Into<String>) -> Self {
        let namespace = namespace.into();
        self.with(|inner| inner.namespace = namespace)
    }

    /// The longest a request waits on Redis, connecting or per command (default
    /// [`DEFAULT_TIMEOUT`]). Zero is refused when the layer is built.
    pub fn timeout(self, timeout: Duration) -> Self {
        self.with(|inner| inner.timeout = timeout)
    }

    /// How long Redis is left alone after a failure (default [`DEFAULT_COOL_DOWN`]).
    pub fn cool_down(self, cool_down: Duration) -> Self {
        self.with(|inner| inner.cool_down = cool_down)
    }
}

impl<V: Send + Sync + 'static> Remote<V> for RedisBackend<V> {
    fn get(&self, key: RequestKey) -> Pin<Box<dyn Future<Output = Lookup<V>> + Send>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            if inner.is_cooling_down() {
                return Lookup::Failed(RemoteFailure::CoolingDown);
            }
            let redis_key = inner.key(key);
            let fetched = inner
                .bounded(async {
                    let mut connection = inner.connection().await?;
                    let bytes: Option<Vec<u8>> = connection.get(&redis_key).await?;
                    Ok(bytes)
                })
                .await;
            match fetched {
                Ok(Some(bytes)) => match inner.codec.decode(&bytes) {
                    Ok(value) => Lookup::Hit(value),
                    Err(_) => Lookup::Failed(RemoteFailure::Codec),
                },
                Ok(None) => Lookup::Miss,
                Err(failure) => Lookup::Failed(failure),
            }
        })
    }

    fn check(&self) -> Result<(), ConfigError> {
        if self.inner.timeout.is_zero() {
            return Err(ConfigError::new(
                "dedup",
                "redis.timeout",
                "must be longer than zero (every call would find Redis unreachable)",
            ));
        }
        Ok(())
    }

    fn cool_down(&self) -> Duration {
        self.inner.cool_down
    }

    fn put(&self, key: RequestKey, value: &V, ttl: Duration, observe: Observe) {
        if self.inner.is_cooling_down() {
            observe.remote_error(RemoteOp::Put, RemoteFailure::CoolingDown);
            return;
        }
        let Ok(bytes) = self.inner.codec.encode(value) else {
            observe.remote_error(RemoteOp::Put, RemoteFailure::Codec);
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            observe.remote_error(RemoteOp::Put, RemoteFailure::NoRuntime);
            return;
        };
        let inner = self.inner.clone();
        let millis = redis_ttl_millis(ttl, SystemTime::now());
        runtime.spawn(async move {
            let redis_key = inner.key(key);
            let stored = inner
                .bounded(async {
                    let mut connection = inner.connection().await?;
                    let () = connection.pset_ex(&redis_key, bytes, millis).await?;
                    Ok(())
                })
                .await;
            if let Err(failure) = stored {
                observe.remote_error(RemoteOp::Put, failure);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_frames_round_trip_and_reject_garbage() {
        let response = http::Response::builder()
            .status(201)
            .header("content-type", "application/json")
            .header("x-request-id", "abc")
            .body(Bytes::from_static(b"{\"ok\":true}"))
            .expect("valid");
        let bytes = HttpResponseCodec.encode(&response).expect("encodes");
        let back = HttpResponseCodec.decode(&bytes).expect("decodes");
        assert_eq!(back.status(), 201);
        assert_eq!(back.headers(), response.headers());
        assert_eq!(back.body(), response.body());
        for cut in 0..12 {
            assert!(
                HttpResponseCodec.decode(&bytes[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        assert!(HttpResponseCodec.decode(b"\x09garbage").is_err());
    }

    #[test]
    fn a_cool_down_too_long_for_the_clock_does_not_panic() {
        let backend = RedisBackend::<String>::json("redis://127.0.0.1:1/")
            .expect("valid url")
            .cool_down(Duration::MAX);
        assert!(!backend.inner.is_cooling_down());
        backend.inner.mark_down();
        assert!(backend.inner.is_cooling_down());
    }

    #[test]
    fn ttls_are_clamped_to_what_redis_accepts() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let now_ms = 1_800_000_000_000u64;
        let longest = i64::MAX as u64 - now_ms - REDIS_CLOCK_MARGIN_MS;
        assert_eq!(redis_ttl_millis(Duration::MAX, now), longest);
        assert_eq!(
            redis_ttl_millis(Duration::from_millis(u64::MAX), now),
            longest
        );
        assert_eq!(redis_ttl_millis(Duration::from_secs(60), now), 60_000);
        assert_eq!(redis_ttl_millis(Duration::from_micros(10), now), 1);
    }

    #[test]
    fn a_zero_timeout_is_a_config_error_naming_the_knob() {
        let backend = RedisBackend::<String>::json("redis://127.0.0.1:1/")
            .expect("valid url")
            .timeout(Duration::ZERO);
        let error = crate::DedupLayer::<String>::builder()
            .redis(backend)
            .build()
            .expect_err("refused");
        assert_eq!(error.component(), "dedup");
        assert_eq!(error.knob(), "redis.timeout");
    }

    #[test]
    fn json_codec_round_trips() {
        let bytes = Codec::<Vec<String>>::encode(&JsonCodec, &vec!["a".to_string()]).expect("ok");
        let back: Vec<String> = JsonCodec.decode(&bytes).expect("ok");
        assert_eq!(back, ["a"]);
        assert!(Codec::<Vec<String>>::decode(&JsonCodec, b"{").is_err());
    }
}
