//! A circuit breaker for LLM provider calls.
//!
//! Fails fast while a provider is down, gives it room to recover, and detects recovery with bounded probes.
//!
//! This crate is part of [tower-llm](https://github.com/tower-llm/tower-llm). Its middleware
//! lands in a later release; today it only reserves the name and the place in the workspace.
