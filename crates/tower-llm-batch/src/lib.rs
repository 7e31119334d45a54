//! Batching of small LLM requests into one upstream call.
//!
//! Collects requests up to a size, weight or wait, makes one call, and hands each caller its own result.
//!
//! This crate is part of [tower-llm](https://github.com/tower-llm/tower-llm). Its middleware
//! lands in a later release; today it only reserves the name and the place in the workspace.
