//! Retries for LLM calls that honour the server and cannot become a storm.
//!
//! Backoff with jitter, the server's Retry-After, a deadline and a retry budget.
//!
//! This crate is part of [tower-llm](https://github.com/tower-llm/tower-llm). Its middleware
//! lands in a later release; today it only reserves the name and the place in the workspace.
