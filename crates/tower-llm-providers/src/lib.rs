//! Tower services for LLM provider APIs.
//!
//! OpenAI, Anthropic, Gemini and OpenAI-compatible servers, streaming included.
//!
//! This crate is part of [tower-llm](https://github.com/tower-llm/tower-llm). Its middleware
//! lands in a later release; today it only reserves the name and the place in the workspace.
