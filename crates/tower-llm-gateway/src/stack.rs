//! The per-model stacks, built from the configuration with our layers only.
//!
//! Outermost first, for each model:
//!
//! ```text
//! dedup (per tenant)  ->  rate limit (per tenant)  ->  retry  ->  fallback | race | hedge
//!                                                                   -> [breaker -> timeout -> provider] per provider
//! ```
//!
//! Dedup is outermost so that a cached or coalesced answer costs the tenant nothing and no
//! retry; retry is outside the strategy, which sees each provider's breaker, so an open
//! breaker is skipped at once by fallback and waited for (its hint) by retry. Streams take the
//! same stack, with the stream dedup layer (one upstream stream replayed to every caller).

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use tower::util::BoxCloneSyncService;
use tower::{ServiceBuilder, ServiceExt};
use tower_llm_breaker::CircuitBreakerLayer;
use tower_llm_core::AttemptBudget;
use tower_llm_core::{
    BoxError, ClassifyResponse, DefaultClassifier, EndSignal, Fingerprint, Outcome, RequestCost,
    ResponseUsage, UpstreamError, Usage,
};
use tower_llm_dedup::{DedupLayer, ReplayStream, StreamDedupLayer};
use tower_llm_providers::{
    Anthropic, ChatChunk, ChatRequest, ChatResponse, EmbeddingRequest, EmbeddingResponse, Gemini,
    HttpChatStream, HttpClient, HttpClientConfig, OpenAi, Streaming,
};
use tower_llm_race::hedge::HedgeDelay;
use tower_llm_race::{Answered, FallbackLayer, HedgeLayer, MarkResponse, RaceLayer, RecordAnswer};
use tower_llm_ratelimit::{
    CountTokens, FollowHeaders, IgnoreHeaders, IgnoreTokens, KeyFn, NoKey, Quota, RateLimitHeaders,
    RateLimitLayer,
};
use tower_llm_retry::RetryLayer;
use tower_llm_testkit::{FaultPlan, Latency, MockServer};

use crate::config::{BreakerConfig, Config, ConfigError, ModelConfig, ProviderKind, StrategyKind};
use crate::trace_context::PropagateTraceContext;

/// A provider's answer on its way through the stack, marked with the provider that gave it.
#[derive(Clone, Debug)]
pub(crate) struct Reply<T> {
    pub(crate) value: T,
    answered: Option<Answered>,
    /// The provider's name.
    pub(crate) provider: Arc<str>,
    /// The upstream's request id, for answers that no longer carry their HTTP facts (a
    /// stream, once the layers have hooked it); whole answers keep theirs in their `meta`.
    upstream_request_id: Option<Arc<str>>,
}

impl<T> Reply<T> {
    fn new(value: T, provider: Arc<str>) -> Self {
        Reply {
            value,
            answered: None,
            provider,
            upstream_request_id: None,
        }
    }
}

/// The upstream's id for the request an answer came from, if it named one.
pub(crate) trait UpstreamRequestId {
    fn upstream_request_id(&self) -> Option<&str>;
}

impl UpstreamRequestId for Reply<ChatResponse> {
    fn upstream_request_id(&self) -> Option<&str> {
        self.value.meta.request_id.as_deref()
    }
}

impl UpstreamRequestId for Reply<EmbeddingResponse> {
    fn upstream_request_id(&self) -> Option<&str> {
        self.value.meta.request_id.as_deref()
    }
}

impl UpstreamRequestId for Reply<ChunkStream> {
    fn upstream_request_id(&self) -> Option<&str> {
        self.upstream_request_id.as_deref()
    }
}

/// A provider's answer says how it went; a stream, through its end signal, when it ends.
impl<T: ClassifyResponse> ClassifyResponse for Reply<T> {
    fn classify_response(&self) -> Outcome {
        self.value.classify_response()
    }

    fn end_signal(&mut self) -> Option<&mut EndSignal> {
        self.value.end_signal()
    }
}

impl<T: ResponseUsage> ResponseUsage for Reply<T> {
    fn usage(&self) -> Option<Usage> {
        self.value.usage()
    }

    fn token_counting(&self) -> Option<tower_llm_core::TokenCounting> {
        self.value.token_counting()
    }
}

impl<T: RateLimitHeaders> RateLimitHeaders for Reply<T> {
    fn rate_limit_headers(&self) -> Option<&http::HeaderMap> {
        self.value.rate_limit_headers()
    }
}

impl<T> RecordAnswer for Reply<T> {
    fn record_answer(&mut self, answered: Answered) {
        self.answered = Some(answered);
    }

    fn answered(&self) -> Option<Answered> {
        self.answered
    }
}

/// A streamed answer as the routes read it, once every layer has hung its hooks on the
/// provider's stream (whose end signal still fires when this is read to its end or dropped).
pub(crate) type ChunkStream = Pin<Box<dyn Stream<Item = Result<ChatChunk, BoxError>> + Send>>;

/// The provider's stream, for the layers.
type Live = HttpChatStream;

/// What the stack needs to know of a request.
pub(crate) trait GatewayRequest: Clone + Send + Sync + RequestCost + 'static {
    fn tenant(&self) -> String;
    fn set_model(&mut self, model: &str);
}

impl GatewayRequest for ChatRequest {
    fn tenant(&self) -> String {
        self.tenant.clone().unwrap_or_default()
    }
    fn set_model(&mut self, model: &str) {
        model.clone_into(&mut self.model);
    }
}

impl GatewayRequest for Streaming<ChatRequest> {
    fn tenant(&self) -> String {
        GatewayRequest::tenant(&self.0)
    }
    fn set_model(&mut self, model: &str) {
        self.0.set_model(model);
    }
}

impl GatewayRequest for EmbeddingRequest {
    fn tenant(&self) -> String {
        self.tenant.clone().unwrap_or_default()
    }
    fn set_model(&mut self, model: &str) {
        model.clone_into(&mut self.model);
    }
}

/// One boxed service of the gateway.
pub(crate) type Svc<Req, Res> = BoxCloneSyncService<Req, Res, BoxError>;

/// A model's stacks.
#[derive(Clone)]
pub(crate) struct ModelStacks {
    pub(crate) chat: Option<Svc<ChatRequest, Reply<ChatResponse>>>,
    pub(crate) stream: Option<Svc<Streaming<ChatRequest>, Reply<ChunkStream>>>,
    pub(crate) embeddings: Option<Svc<EmbeddingRequest, Reply<EmbeddingResponse>>>,
    /// The providers serving it, in order.
    pub(crate) providers: Vec<String>,
}

impl std::fmt::Debug for ModelStacks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelStacks")
            .field("providers", &self.providers)
            .field("chat", &self.chat.is_some())
            .field("embeddings", &self.embeddings.is_some())
            .finish()
    }
}

/// The HTTP client of every provider: the shared pooled client, writing the trace context
/// on each request.
type Client = PropagateTraceContext<HttpClient>;

enum Upstream {
    OpenAi(OpenAi<Client>),
    Anthropic(Anthropic<Client>),
    Gemini(Gemini<Client>),
}

impl Upstream {
    fn chat(&self, leg: &Leg) -> Svc<ChatRequest, Reply<ChatResponse>> {
        match self {
            Upstream::OpenAi(p) => leg.wrap(p.clone()),
            Upstream::Anthropic(p) => leg.wrap(p.clone()),
            Upstream::Gemini(p) => leg.wrap(p.clone()),
        }
    }

    fn stream(&self, leg: &Leg) -> Svc<Streaming<ChatRequest>, Reply<Live>> {
        match self {
            Upstream::OpenAi(p) => leg.wrap(p.clone()),
            Upstream::Anthropic(p) => leg.wrap(p.clone()),
            Upstream::Gemini(p) => leg.wrap(p.clone()),
        }
    }

    fn embeddings(&self, leg: &Leg) -> Option<Svc<EmbeddingRequest, Reply<EmbeddingResponse>>> {
        match self {
            Upstream::OpenAi(p) => Some(leg.wrap(p.clone())),
            Upstream::Anthropic(_) | Upstream::Gemini(_) => None,
        }
    }
}

/// Everything built from a configuration: the stacks, and the mock servers they may call.
#[derive(Debug)]
pub(crate) struct Built {
    pub(crate) models: BTreeMap<String, ModelStacks>,
    /// In-process mock upstreams (`kind = "mock"`), kept alive as long as the gateway.
    pub(crate) mocks: Vec<(String, MockServer)>,
}

/// A layer's builder refused a setting: the error under the gateway's key for it.
fn cfg_err(at: &str, e: impl std::fmt::Display) -> ConfigError {
    ConfigError::new(
        crate::config::GATEWAY,
        at.to_owned(),
        format!("is refused: {e}"),
    )
}

/// A provider's builder refused a setting: the error under the gateway's key for it.
fn provider_err(
    at: &str,
    p: &crate::config::ProviderConfig,
    e: &tower_llm_providers::ConfigError,
) -> ConfigError {
    let key = match e.knob() {
        "api_key" => p.api_key_knob,
        "base_url" => "base_url",
        _ => return cfg_err(at, e),
    };
    // The knob is now the gateway's key: the provider's reason alone follows it.
    ConfigError::new(
        crate::config::GATEWAY,
        format!("{at}.{key}"),
        e.reason().to_owned(),
    )
}

/// Builds every provider and model stack. Mock providers are started here.
pub(crate) async fn build(config: &Config) -> Result<Built, BoxError> {
    let client = PropagateTraceContext::new(HttpClientConfig::default().build()?);
    let mut upstreams = BTreeMap::new();
    // One adaptive limit per provider, whichever models and routes use it: the capacity it
    // learns is the provider's.
    let mut limits: BTreeMap<String, ProviderLimit> = BTreeMap::new();
    let mut mocks = Vec::new();
    for (name, p) in &config.providers {
        let key = p.api_key.as_ref().map(|k| k.expose().to_owned());
        let at = format!("providers.{name}");
        let upstream = match p.kind {
            ProviderKind::Mock => {
                let mut plan = FaultPlan::healthy().name(name.clone());
                if let Some(latency) = p.mock_latency {
                    plan = plan.latency(Latency::Fixed(latency));
                }
                let server = MockServer::start(plan).await?;
                let base = format!("{}/v1", server.base_url());
                mocks.push((name.clone(), server));
                let builder = OpenAi::compatible(base)
                    .api_key(key.unwrap_or_else(|| "mock".into()))
                    .name(name.clone());
                Upstream::OpenAi(
                    builder
                        .build_with(client.clone())
                        .map_err(|e| provider_err(&at, p, &e))?,
                )
            }
            ProviderKind::Openai => {
                let mut builder = match &p.base_url {
                    Some(base) => OpenAi::compatible(base.clone()),
                    None => OpenAi::builder(),
                };
                if let Some(key) = key {
                    builder = builder.api_key(key);
                }
                Upstream::OpenAi(
                    builder
                        .name(name.clone())
                        .build_with(client.clone())
                        .map_err(|e| provider_err(&at, p, &e))?,
                )
            }
            ProviderKind::Anthropic => {
                let mut builder = Anthropic::builder().name(name.clone());
                if let Some(base) = &p.base_url {
                    builder = builder.base_url(base.clone());
                }
                if let Some(key) = key {
                    builder = builder.api_key(key);
                }
                Upstream::Anthropic(
                    builder
                        .build_with(client.clone())
                        .map_err(|e| provider_err(&at, p, &e))?,
                )
            }
            ProviderKind::Gemini => {
                let mut builder = Gemini::builder().name(name.clone());
                if let Some(base) = &p.base_url {
                    builder = builder.base_url(base.clone());
                }
                if let Some(key) = key {
                    builder = builder.api_key(key);
                }
                Upstream::Gemini(
                    builder
                        .build_with(client.clone())
                        .map_err(|e| provider_err(&at, p, &e))?,
                )
            }
        };
        upstreams.insert(name.clone(), upstream);
        if let Some(adaptive) = &p.adaptive_concurrency {
            let mut builder = RateLimitLayer::builder()
                .name(name.clone())
                .adaptive_concurrency(adaptive.settings.clone());
            if let Some(wait) = adaptive.max_wait {
                builder = builder.max_wait(wait);
            }
            let limit = builder
                .adapt_to_headers()
                .build()
                .map_err(|e| cfg_err(&format!("{at}.adaptive_concurrency"), e))?;
            limits.insert(name.clone(), limit);
        }
    }

    let mut models = BTreeMap::new();
    let default_stack = ModelConfig::default();
    for model in config.model_names() {
        let stack = config.models.get(&model).unwrap_or(&default_stack);
        let providers = config.providers_of(&model);
        let layers = ModelLayers::new(stack, &model)?;
        let mut chat_legs = Vec::new();
        let mut stream_legs = Vec::new();
        let mut embedding_legs = Some(Vec::new());
        for provider in &providers {
            let (Some(upstream), Some(p)) =
                (upstreams.get(provider), config.providers.get(provider))
            else {
                return Err(cfg_err(
                    &format!("models.{model}.providers"),
                    format!("no provider {provider:?}"),
                )
                .into());
            };
            let upstream_model: Arc<str> =
                p.model_map.get(&model).unwrap_or(&model).as_str().into();
            let name: Arc<str> = provider.as_str().into();
            let breaker =
                match &stack.breaker {
                    Some(b) => Some(b.builder(format!("{model}/{provider}")).build().map_err(
                        |e| BreakerConfig::error(&format!("models.{model}.breaker"), &e),
                    )?),
                    None => None,
                };
            let leg = Leg {
                provider: name,
                upstream_model,
                limit: limits.get(provider.as_str()).cloned(),
                breaker,
                timeout: stack.timeout,
            };
            chat_legs.push(upstream.chat(&leg));
            stream_legs.push(upstream.stream(&leg));
            embedding_legs = match (embedding_legs, upstream.embeddings(&leg)) {
                (Some(mut legs), Some(service)) => {
                    legs.push(service);
                    Some(legs)
                }
                _ => None,
            };
        }
        let chat = Some(with_dedup_chat(
            layers.around(strategy(chat_legs, stack, &model, layers.budget.as_ref())?),
            stack,
            &model,
        )?);
        let stream = Some(with_stream_dedup(
            BoxCloneSyncService::new(layers.around(strategy(
                stream_legs,
                stack,
                &model,
                layers.budget.as_ref(),
            )?)),
            stack,
            &model,
        )?);
        let embeddings = match embedding_legs {
            Some(legs) if !legs.is_empty() => Some(with_dedup_embeddings(
                layers.around(strategy(legs, stack, &model, layers.budget.as_ref())?),
                stack,
                &model,
            )?),
            _ => None,
        };
        models.insert(
            model.clone(),
            ModelStacks {
                chat,
                stream,
                embeddings,
                providers,
            },
        );
    }
    Ok(Built { models, mocks })
}

/// One provider for one model: the upstream model name, a timeout per attempt, the breaker
/// (shared by the provider's chat, stream and embedding legs), and the mark of who answered.
struct Leg {
    provider: Arc<str>,
    upstream_model: Arc<str>,
    /// The provider's adaptive concurrency limit, outside its breaker and timeout so that it
    /// sees their timeouts and is not fooled by an open circuit's fast refusals.
    limit: Option<ProviderLimit>,
    breaker: Option<CircuitBreakerLayer>,
    timeout: Option<Duration>,
}

impl Leg {
    /// The leg around a provider's `service`, boxed once (the provider itself is not boxed
    /// apart: every box is one more allocation per call and per clone of the stack).
    fn wrap<S, Req, Res>(&self, service: S) -> Svc<Req, Reply<Res>>
    where
        S: tower::Service<Req, Response = Res, Error = UpstreamError>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
        Req: GatewayRequest,
        Res: ClassifyResponse + RateLimitHeaders + Send + 'static,
    {
        let provider = self.provider.clone();
        let upstream_model = self.upstream_model.clone();
        let service = ServiceBuilder::new()
            .map_response(move |value| Reply::new(value, provider.clone()))
            .map_request(move |mut request: Req| {
                request.set_model(&upstream_model);
                request
            })
            .option_layer(self.limit.clone())
            .option_layer(self.breaker.clone())
            .option_layer(self.timeout.map(tower::timeout::TimeoutLayer::new))
            .map_err(BoxError::from)
            .service(service);
        BoxCloneSyncService::new(service)
    }
}

fn strategy<Req, Res>(
    legs: Vec<Svc<Req, Reply<Res>>>,
    stack: &ModelConfig,
    model: &str,
    budget: Option<&AttemptBudget>,
) -> Result<Svc<Req, Reply<Res>>, ConfigError>
where
    Req: GatewayRequest,
    Res: ClassifyResponse + Send + 'static,
{
    Ok(match stack.strategy {
        StrategyKind::Fallback => {
            let mut fallback = FallbackLayer::new()
                .name(model.to_owned())
                .record_winner(MarkResponse);
            if let Some(budget) = budget {
                fallback = fallback.shared_budget(budget.clone());
            }
            BoxCloneSyncService::new(ServiceBuilder::new().layer(fallback).service(legs))
        }
        StrategyKind::Race => BoxCloneSyncService::new(
            ServiceBuilder::new()
                .layer(
                    RaceLayer::new()
                        .name(model.to_owned())
                        .record_winner(MarkResponse),
                )
                .service(legs),
        ),
        StrategyKind::Hedge => {
            let delay = stack.hedge_delay.ok_or_else(|| {
                ConfigError::new(
                    crate::config::GATEWAY,
                    format!("models.{model}.hedge_delay"),
                    "is required with strategy = \"hedge\"",
                )
            })?;
            let mut hedge = HedgeLayer::builder()
                .delay(HedgeDelay::Fixed(delay))
                .name(model.to_owned())
                .record_winner(MarkResponse);
            if let Some(budget) = budget {
                hedge = hedge.shared_budget(budget.clone());
            }
            let hedge = hedge.build()?;
            BoxCloneSyncService::new(ServiceBuilder::new().layer(hedge).service(legs))
        }
    })
}

/// A model's tenant key: every request type of the gateway falls under its tenant, so one
/// rate limiter serves a model's whole-answer, streaming and embedding stacks.
#[derive(Clone, Copy, Debug)]
struct TenantKey;

impl<R: GatewayRequest> KeyFn<R> for TenantKey {
    type Key = String;

    fn key(&self, request: &R) -> String {
        request.tenant()
    }
}

type TenantLimit = RateLimitLayer<TenantKey, DefaultClassifier, CountTokens, IgnoreHeaders>;

/// A provider's adaptive concurrency limit, capped by the rate-limit headers it answers with.
type ProviderLimit = RateLimitLayer<NoKey, DefaultClassifier, IgnoreTokens, FollowHeaders>;

/// The layers one model's stacks share (the contract: one layer value, one state): its retry
/// budget and its per-tenant limits hold across whole answers, streams and embeddings.
struct ModelLayers {
    retry: Option<RetryLayer>,
    rate_limit: Option<TenantLimit>,
    /// One allowance for the model's retries, fallbacks and hedges (`budget` in its config).
    budget: Option<AttemptBudget>,
}

impl ModelLayers {
    fn new(stack: &ModelConfig, model: &str) -> Result<Self, ConfigError> {
        let budget = stack
            .budget
            .map(AttemptBudget::new)
            .transpose()
            .map_err(|e| cfg_err(&format!("models.{model}.budget"), e))?;
        let retry = match &stack.retry {
            Some(r) => {
                // Named after the model, so each model's layers report their own series.
                let mut builder = r.builder(model.to_owned());
                if let Some(budget) = &budget {
                    builder = builder.shared_budget(budget.clone());
                }
                Some(
                    builder
                        .build()
                        .map_err(|e| r.error(&format!("models.{model}.retry"), &e))?,
                )
            }
            None => None,
        };
        let rate_limit = match &stack.rate_limit {
            Some(l) => {
                let mut builder = RateLimitLayer::builder()
                    .name(model.to_owned())
                    .pause_on_rate_limit(false);
                if let Some(rpm) = l.requests_per_minute {
                    builder = builder.requests(Quota::per_minute(rpm));
                }
                if let Some(c) = l.concurrency {
                    builder = builder.concurrency(c);
                }
                if let Some(wait) = l.max_wait {
                    builder = builder.max_wait(wait);
                }
                Some(
                    builder
                        .tokens(l.tokens_per_minute.map(Quota::per_minute))
                        .key_fn(TenantKey)
                        .build()
                        .map_err(|e| cfg_err(&format!("models.{model}.rate_limit"), e))?,
                )
            }
            None => None,
        };
        Ok(ModelLayers {
            retry,
            rate_limit,
            budget,
        })
    }

    /// Retry, then the per-tenant rate limit, around the strategy; not boxed, so that the
    /// stack over them is boxed once rather than at each layer.
    fn around<Req, Res>(
        &self,
        inner: Svc<Req, Reply<Res>>,
    ) -> impl tower::Service<Req, Response = Reply<Res>, Error = BoxError, Future: Send + 'static>
    + Clone
    + Send
    + Sync
    + 'static
    where
        Req: GatewayRequest,
        Res: ClassifyResponse + ResponseUsage + Send + 'static,
    {
        ServiceBuilder::new()
            .option_layer(self.rate_limit.clone())
            .option_layer(self.retry.clone())
            .service(inner)
    }
}

fn with_dedup<Req, Res, S>(
    inner: S,
    stack: &ModelConfig,
    model: &str,
) -> Result<Svc<Req, Reply<Res>>, ConfigError>
where
    Req:
        GatewayRequest + Fingerprint + tower_llm_core::Deterministic + tower_llm_core::CacheControl,
    Res: ClassifyResponse + Clone + Send + Sync + 'static,
    S: tower::Service<Req, Response = Reply<Res>, Error = BoxError> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
{
    let Some(d) = &stack.dedup else {
        return Ok(BoxCloneSyncService::new(inner));
    };
    let at = format!("models.{model}.dedup");
    // Dedup's default key is core's fingerprint of the typed request, which covers its
    // `tenant`: two tenants never share an answer.
    let builder = DedupLayer::<Reply<Res>>::builder()
        .ttl(d.ttl)
        .max_entries(d.max_entries);
    Ok(if d.cache_all {
        let layer = builder.cache_all().build().map_err(|e| cfg_err(&at, e))?;
        BoxCloneSyncService::new(ServiceBuilder::new().layer(layer).service(inner))
    } else {
        let layer = builder.build().map_err(|e| cfg_err(&at, e))?;
        BoxCloneSyncService::new(ServiceBuilder::new().layer(layer).service(inner))
    })
}

fn with_dedup_chat<S>(
    inner: S,
    stack: &ModelConfig,
    model: &str,
) -> Result<Svc<ChatRequest, Reply<ChatResponse>>, ConfigError>
where
    S: tower::Service<ChatRequest, Response = Reply<ChatResponse>, Error = BoxError>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    with_dedup(inner, stack, model)
}

fn with_dedup_embeddings<S>(
    inner: S,
    stack: &ModelConfig,
    model: &str,
) -> Result<Svc<EmbeddingRequest, Reply<EmbeddingResponse>>, ConfigError>
where
    S: tower::Service<EmbeddingRequest, Response = Reply<EmbeddingResponse>, Error = BoxError>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    with_dedup(inner, stack, model)
}

/// A stream's items as the stream dedup layer keeps them: first who answered (and the
/// upstream's request id), then the chunks, so that a replayed stream still names them.
#[derive(Clone, Debug)]
enum Tagged {
    Head {
        provider: Arc<str>,
        upstream_request_id: Option<Arc<str>>,
    },
    Chunk(ChatChunk),
}

fn upstream_request_id(reply: &Reply<Live>) -> Option<Arc<str>> {
    reply.value.meta().request_id.as_deref().map(Arc::from)
}

/// Identical streamed requests of one tenant share one upstream stream: a caller that joins
/// late gets the chunks so far, then the rest; a finished deterministic stream is replayed
/// from the cache. Either way the routes get the chunks as a [`ChunkStream`].
fn with_stream_dedup(
    inner: Svc<Streaming<ChatRequest>, Reply<Live>>,
    stack: &ModelConfig,
    model: &str,
) -> Result<Svc<Streaming<ChatRequest>, Reply<ChunkStream>>, ConfigError> {
    let Some(d) = &stack.dedup else {
        return Ok(BoxCloneSyncService::new(inner.map_response(
            |reply: Reply<Live>| {
                let provider = reply.provider.clone();
                let upstream_request_id = upstream_request_id(&reply);
                let chunks: ChunkStream =
                    Box::pin(reply.value.map(|chunk| chunk.map_err(BoxError::from)));
                Reply {
                    upstream_request_id,
                    ..Reply::new(chunks, provider)
                }
            },
        )));
    };
    let at = format!("models.{model}.dedup");
    let tagged = inner.map_response(|reply: Reply<Live>| {
        let head = Tagged::Head {
            provider: reply.provider.clone(),
            upstream_request_id: upstream_request_id(&reply),
        };
        futures_util::stream::once(std::future::ready(Ok::<_, BoxError>(head))).chain(
            reply
                .value
                .map(|chunk| chunk.map(Tagged::Chunk).map_err(BoxError::from)),
        )
    });
    let builder = StreamDedupLayer::<Tagged>::builder()
        .ttl(d.ttl)
        .max_entries(d.max_entries);
    let deduped: Svc<Streaming<ChatRequest>, ReplayStream<Tagged>> = if d.cache_all {
        let layer = builder.cache_all().build().map_err(|e| cfg_err(&at, e))?;
        BoxCloneSyncService::new(ServiceBuilder::new().layer(layer).service(tagged))
    } else {
        let layer = builder.build().map_err(|e| cfg_err(&at, e))?;
        BoxCloneSyncService::new(ServiceBuilder::new().layer(layer).service(tagged))
    };
    Ok(BoxCloneSyncService::new(deduped.and_then(
        |mut replay: ReplayStream<Tagged>| async move {
            let (provider, upstream_request_id) = match replay.next().await {
                Some(Ok(Tagged::Head {
                    provider,
                    upstream_request_id,
                })) => (provider, upstream_request_id),
                Some(Err(error)) => return Err(error),
                // The head is always the first item; an empty stream has none.
                Some(Ok(Tagged::Chunk(_))) | None => (Arc::from("unknown"), None),
            };
            let chunks: ChunkStream = Box::pin(replay.filter_map(|item| {
                std::future::ready(match item {
                    Ok(Tagged::Chunk(chunk)) => Some(Ok(chunk)),
                    Ok(Tagged::Head { .. }) => None,
                    Err(error) => Some(Err(error)),
                })
            }));
            Ok(Reply {
                upstream_request_id,
                ..Reply::new(chunks, provider)
            })
        },
    )))
}
