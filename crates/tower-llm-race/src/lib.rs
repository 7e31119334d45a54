//! One request, several providers.
//!
//! Race, hedge, fallback, gather, vote and route across provider services.
//!
//! This crate is part of [tower-llm](https://github.com/tower-llm/tower-llm). Its middleware
//! lands in a later release; today it only reserves the name and the place in the workspace.
