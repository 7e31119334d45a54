//! A real HTTP mock of the OpenAI, Anthropic and Gemini APIs with scripted faults.
