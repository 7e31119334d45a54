//! How requests become one batch and one response becomes many answers.
//!
//! The batcher itself knows nothing about request formats: a [`Pack`] and [`Unpack`] adapter says which
//! requests may share a batch ([`Key`](Pack::Key)), how a batch is packed into the one
//! request the inner service takes, and how that service's one response is split back into an
//! answer per caller, in order. Three adapters come with the crate:
//!
//! - [`VecAdapter`]: the inner service already takes a `Vec<Req>` and answers a `Vec<Res>`,
//!   one result per request, in order.
//! - [`PackAdapter`]: you supply `pack` (many requests to one) and `unpack` (one response to
//!   an answer or an error per request), e.g. to put many prompts into one chat completion.
//! - [`EmbeddingsAdapter`](crate::EmbeddingsAdapter): OpenAI-style embeddings over
//!   `http::Request<Bytes>`, concatenating the `input` arrays and splitting `data` by `index`.

use std::fmt;
use std::hash::Hash;

use tower_llm_core::{BoxError, KeyFn, NoKey};

use crate::error::{ItemMissing, LengthMismatch};

/// Packs requests into one batch request for the inner service.
///
/// [`prepare`](Self::prepare) runs in the caller's `call`, so that a malformed request fails at
/// once and the batching task only moves values; [`pack`](Self::pack) runs in the batching
/// task when a batch is sent. The other half, [`Unpack`], splits the inner response.
pub trait Pack<Req> {
    /// Requests with equal keys may share a batch; requests with different keys never do
    /// (e.g. different models, endpoints or API keys).
    type Key: Eq + Hash + Clone + Send + 'static;
    /// What is kept of a request while it waits for its batch.
    type Item: Send + 'static;
    /// The request the inner service receives for a whole batch.
    type Batch;
    /// What [`Unpack::unpack`] needs to know about the batch's layout, e.g. how many inputs
    /// each caller contributed.
    type Split: Send + 'static;

    /// Checks one request and returns its batch key and the item to queue. An error fails
    /// that request alone, before it is queued.
    fn prepare(&self, request: Req) -> Result<(Self::Key, Self::Item), BoxError>;

    /// Packs the items of one batch, in arrival order, into the inner request.
    fn pack(&self, key: Self::Key, items: Vec<Self::Item>) -> (Self::Batch, Self::Split);
}

/// Splits the inner service's response to a batch into one result per request.
pub trait Unpack<Req, BatchRes>: Pack<Req> {
    /// What each caller receives.
    type Response: Send + 'static;

    /// Splits `response` into one result per packed item, in the order they were packed.
    /// Should return exactly as many results as items were packed; the batcher fails any
    /// missing ones with [`ItemMissing`] and ignores extra ones.
    fn unpack(
        &self,
        response: BatchRes,
        split: Self::Split,
    ) -> Vec<Result<Self::Response, BoxError>>;
}

/// The adapter for an inner `Service<Vec<Req>, Response = Vec<Res>>` that answers one result
/// per request, in order.
///
/// All requests may share a batch. If the inner service answers a different number of results
/// than it was sent, every caller of that batch gets a [`LengthMismatch`] error: which result
/// belongs to whom is then unknowable, and a wrong answer is worse than none.
#[derive(Clone, Copy, Debug, Default)]
pub struct VecAdapter;

impl<Req: Send + 'static> Pack<Req> for VecAdapter {
    type Key = ();
    type Item = Req;
    type Batch = Vec<Req>;
    type Split = usize;

    fn prepare(&self, request: Req) -> Result<((), Req), BoxError> {
        Ok(((), request))
    }

    fn pack(&self, _key: (), items: Vec<Req>) -> (Vec<Req>, usize) {
        let len = items.len();
        (items, len)
    }
}

impl<Req: Send + 'static, Res: Send + 'static> Unpack<Req, Vec<Res>> for VecAdapter {
    type Response = Res;

    fn unpack(&self, response: Vec<Res>, sent: usize) -> Vec<Result<Res, BoxError>> {
        if response.len() == sent {
            return response.into_iter().map(Ok).collect();
        }
        let received = response.len();
        (0..sent)
            .map(|_| Err(Box::new(LengthMismatch { sent, received }) as BoxError))
            .collect()
    }
}

/// An adapter built from two closures: `pack` turns the requests of a batch into one inner
/// request, `unpack` turns the inner response into one result per request, in order.
///
/// This is how chat requests are batched: `pack` numbers many prompts in one message and asks
/// for numbered answers; `unpack` parses them back, returning an error for each answer it
/// cannot find or parse, so one garbled answer fails only its own caller. Name the inner
/// response's type in `unpack`'s signature.
///
/// By default every request may share a batch ([`NoKey`]); [`key_by`](Self::key_by) keeps
/// apart the requests that must not (other model, other tenant) with core's
/// [`KeyFn`], any `Fn(&Req) -> K`.
///
/// ```
/// use std::time::Duration;
/// use tower::{BoxError, Service, ServiceBuilder, ServiceExt, service_fn};
/// use tower_llm_batch::BatchLayer;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), BoxError> {
/// // Stands in for a chat model that answers numbered questions line by line.
/// let model = service_fn(|prompt: String| async move {
///     let answers: Vec<String> = prompt.lines().skip(1).map(str::to_uppercase).collect();
///     Ok::<_, BoxError>(answers.join("\n"))
/// });
/// let pack = |questions: Vec<String>| {
///     let numbered: Vec<String> =
///         questions.iter().enumerate().map(|(i, q)| format!("{}. {q}", i + 1)).collect();
///     format!("Answer each line:\n{}", numbered.join("\n"))
/// };
/// let unpack = |answer: String, count: usize| {
///     (1..=count)
///         .map(|n| {
///             let prefix = format!("{n}. ");
///             answer.lines().find_map(|l| l.strip_prefix(&prefix)).map(str::to_owned)
///                 .ok_or_else(|| format!("no answer {n}"))
///         })
///         .collect::<Vec<Result<String, String>>>()
/// };
/// let service = ServiceBuilder::new()
///     .layer(BatchLayer::packed(pack, unpack).max_items(2).build()?)
///     .service(model);
///
/// let (a, b) = tokio::join!(
///     service.clone().oneshot("red".to_owned()),
///     service.clone().oneshot("blue".to_owned()),
/// );
/// assert_eq!((a?, b?), ("RED".to_owned(), "BLUE".to_owned()));
/// assert_eq!(service.stats().batches, 1);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct PackAdapter<P, U, K = NoKey> {
    pack: P,
    unpack: U,
    key: K,
}

impl<P, U> PackAdapter<P, U, NoKey> {
    /// An adapter from `pack: Fn(Vec<Req>) -> Batch` and
    /// `unpack: Fn(BatchRes, usize) -> Vec<Result<Res, E>>`, where the `usize` is the number
    /// of requests that were packed and `E: Into<BoxError>`.
    pub const fn new(pack: P, unpack: U) -> Self {
        PackAdapter {
            pack,
            unpack,
            key: NoKey,
        }
    }
}

impl<P, U, K> PackAdapter<P, U, K> {
    /// Only requests with equal `key.key(&request)` share a batch; `key` is a core
    /// [`KeyFn`], such as a closure `|request: &Req| request.model.clone()`.
    pub fn key_by<F>(self, key: F) -> PackAdapter<P, U, F> {
        PackAdapter {
            pack: self.pack,
            unpack: self.unpack,
            key,
        }
    }
}

impl<P, U, K> fmt::Debug for PackAdapter<P, U, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PackAdapter").finish_non_exhaustive()
    }
}

impl<Req, P, U, K, Batch> Pack<Req> for PackAdapter<P, U, K>
where
    Req: Send + 'static,
    K: KeyFn<Req>,
    P: Fn(Vec<Req>) -> Batch,
{
    type Key = K::Key;
    type Item = Req;
    type Batch = Batch;
    type Split = usize;

    fn prepare(&self, request: Req) -> Result<(K::Key, Req), BoxError> {
        Ok((self.key.key(&request), request))
    }

    fn pack(&self, _key: K::Key, items: Vec<Req>) -> (Batch, usize) {
        let len = items.len();
        ((self.pack)(items), len)
    }
}

impl<Req, P, U, K, Batch, BatchRes, Res, E> Unpack<Req, BatchRes> for PackAdapter<P, U, K>
where
    Req: Send + 'static,
    K: KeyFn<Req>,
    P: Fn(Vec<Req>) -> Batch,
    U: Fn(BatchRes, usize) -> Vec<Result<Res, E>>,
    Res: Send + 'static,
    E: Into<BoxError>,
{
    type Response = Res;

    fn unpack(&self, response: BatchRes, sent: usize) -> Vec<Result<Res, BoxError>> {
        let mut results: Vec<Result<Res, BoxError>> = (self.unpack)(response, sent)
            .into_iter()
            .take(sent)
            .map(|result| result.map_err(Into::into))
            .collect();
        for position in results.len()..sent {
            results.push(Err(Box::new(ItemMissing::new(position))));
        }
        results
    }
}
