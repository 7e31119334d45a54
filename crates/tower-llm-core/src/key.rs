//! The one key-function type: which key a request is counted, limited or broken under.

use std::hash::Hash;

/// Chooses the key a request falls under (API key, tenant, model, host...). Layers with
/// per-key state (rate limits, breakers, batches) keep one state per key.
///
/// Any `Fn(&Req) -> K` is a key function; [`NoKey`] puts every request under one key.
///
/// ```
/// use tower_llm_core::{KeyFn, NoKey};
///
/// let by_tenant = |req: &http::Request<()>| {
///     req.headers().get("x-tenant").map(|v| v.as_bytes().to_vec())
/// };
/// let req = http::Request::builder().header("x-tenant", "acme").body(()).unwrap();
/// assert_eq!(by_tenant.key(&req), Some(b"acme".to_vec()));
/// assert!(KeyFn::<http::Request<()>>::single(&NoKey));
/// ```
pub trait KeyFn<Req> {
    /// The key type.
    type Key: Hash + Eq + Clone + Send + Sync + 'static;

    /// The key of `request`.
    fn key(&self, request: &Req) -> Self::Key;

    /// Whether every request maps to one key, so a layer can skip its key table.
    fn single(&self) -> bool {
        false
    }
}

impl<Req, F, K> KeyFn<Req> for F
where
    F: Fn(&Req) -> K,
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    type Key = K;

    fn key(&self, request: &Req) -> K {
        self(request)
    }
}

/// Every request under one key: the default of every keyed layer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NoKey;

impl<Req> KeyFn<Req> for NoKey {
    type Key = ();

    fn key(&self, _request: &Req) {}

    fn single(&self) -> bool {
        true
    }
}
