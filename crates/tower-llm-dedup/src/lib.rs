//! In-flight request coalescing and a TTL response cache for LLM calls.
//!
//! Identical concurrent requests make one upstream call; completed successes are served from a bounded cache.
//!
//! This crate is part of [tower-llm](https://github.com/tower-llm/tower-llm). Its middleware
//! lands in a later release; today it only reserves the name and the place in the workspace.
