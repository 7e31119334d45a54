//! Rate limiting that knows LLM quotas.
//!
//! Concurrency, spacing, requests and tokens per minute, and the server's 429 cool-down.
//!
//! This crate is part of [tower-llm](https://github.com/tower-llm/tower-llm). Its middleware
//! lands in a later release; today it only reserves the name and the place in the workspace.
