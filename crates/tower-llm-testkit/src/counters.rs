//! What the mock server has seen.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::plan::Route;

/// A snapshot of what a [`MockServer`](crate::MockServer) received and how it ended, read with
/// [`MockServer::counters`](crate::MockServer::counters).
///
/// Every request is counted in `requests` when it arrives and, once over, in exactly one of
/// `completed` (the server finished its answer: a whole body sent, a stream run to its end or
/// deliberately cut, a dropped connection) or `cancelled` (the client went away first, for
/// example by dropping its response future: the server saw the connection close and dropped
/// its handler). So `requests == completed + cancelled + in_flight`, unless requests were in
/// flight at the last [`reset_counters`](crate::MockServer::reset_counters): those are not in
/// the new `requests` but stay in `in_flight` and, when they end, count in `completed` or
/// `cancelled`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Requests received, on any path.
    pub requests: u64,
    /// Requests whose answer the server finished.
    pub completed: u64,
    /// Requests the client abandoned before the server finished answering.
    pub cancelled: u64,
    /// Connections closed without an answer by [`Fault::DropConnection`](crate::Fault).
    pub dropped: u64,
    /// Requests being answered now (streams included, until they end).
    pub in_flight: u64,
    /// The most requests ever in flight at once.
    pub max_concurrent: u64,
    /// Requests per route (paths the mock does not know are counted in `requests` only).
    pub by_route: BTreeMap<Route, u64>,
    /// Requests per API key (from `Authorization: Bearer`, `x-api-key`, `x-goog-api-key`,
    /// `?key=`, or the access key id of a SigV4 `Authorization`); `""` for requests without
    /// one.
    pub by_key: BTreeMap<String, u64>,
    /// Answers per HTTP status (dropped connections have none).
    pub by_status: BTreeMap<u16, u64>,
}

impl Counters {
    /// Requests received on `route`.
    pub fn route(&self, route: Route) -> u64 {
        self.by_route.get(&route).copied().unwrap_or(0)
    }

    /// Requests received with API key `key` (`""`: without a key).
    pub fn key(&self, key: &str) -> u64 {
        self.by_key.get(key).copied().unwrap_or(0)
    }

    /// Answers sent with `status`.
    pub fn status(&self, status: u16) -> u64 {
        self.by_status.get(&status).copied().unwrap_or(0)
    }
}

/// One request as the mock received it, kept by [`MockServer::received`](crate::MockServer::received).
#[derive(Clone, Debug)]
pub struct ReceivedRequest {
    /// The route it matched, `None` for an unknown path.
    pub route: Option<Route>,
    /// Its method.
    pub method: http::Method,
    /// Its URI (path and query).
    pub uri: http::Uri,
    /// Its headers, credentials included (this is a test tool).
    pub headers: http::HeaderMap,
    /// The API key it carried (see [`Counters::by_key`]).
    pub api_key: String,
    /// Its body.
    pub body: Bytes,
}

impl ReceivedRequest {
    /// The body as JSON, if it is JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}
