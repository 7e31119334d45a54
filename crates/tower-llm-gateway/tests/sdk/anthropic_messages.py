"""The official anthropic SDK against the gateway's /v1/messages: plain and streamed, a tool
call, a refusal, an error in Anthropic's shape, and the SDK's own retry honouring the
gateway's retry-after.

Env: GATEWAY_URL, GATEWAY_KEY, REFUSAL."""
import os
import time

import anthropic

client = anthropic.Anthropic(base_url=os.environ["GATEWAY_URL"],
                             api_key=os.environ["GATEWAY_KEY"], max_retries=0)

m = client.messages.create(model="gpt-4o-mini", max_tokens=64, system="be brief",
                           messages=[{"role": "user", "content": "plain"}])
assert m.type == "message" and m.role == "assistant", m
assert m.content[0].type == "text" and m.content[0].text == "py: plain", m
assert m.stop_reason == "end_turn", m
assert m.usage.output_tokens > 0, m

raw = client.messages.with_raw_response.create(
    model="gpt-4o-mini", max_tokens=64, messages=[{"role": "user", "content": "id"}])
assert raw.headers.get("x-request-id"), raw.headers

with client.messages.stream(model="gpt-4o-mini", max_tokens=64,
                            messages=[{"role": "user", "content": "streamed"}]) as stream:
    text = "".join(stream.text_stream)
    final = stream.get_final_message()
assert text == "py: streamed", text
assert final.content[0].text == "py: streamed", final
assert final.stop_reason == "end_turn", final
# The upstream's usage comes at the end of its stream: the totals are in message_delta.
assert final.usage.input_tokens > 0 and final.usage.output_tokens > 0, final.usage

# A refusal is the answer's text, with stop_reason "refusal", plain and streamed.
refusal = os.environ["REFUSAL"]
m = client.messages.create(model="tool-model", max_tokens=64,
                           messages=[{"role": "user", "content": "please refuse"}])
assert m.stop_reason == "refusal" and m.content[0].text == refusal, m
with client.messages.stream(model="tool-model", max_tokens=64,
                            messages=[{"role": "user", "content": "please refuse"}]) as stream:
    final = stream.get_final_message()
assert final.stop_reason == "refusal" and final.content[0].text == refusal, final

tools = [{"name": "get_weather", "description": "The weather in a city",
          "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]
first = client.messages.create(model="tool-model", max_tokens=64, tools=tools,
                               messages=[{"role": "user", "content": "weather in Rome?"}])
assert first.stop_reason == "tool_use", first
use = [b for b in first.content if b.type == "tool_use"][0]
assert use.name == "get_weather" and use.input == {"city": "Rome"}, use
second = client.messages.create(model="tool-model", max_tokens=64, tools=tools, messages=[
    {"role": "user", "content": "weather in Rome?"},
    {"role": "assistant", "content": first.content},
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                  "content": "sunny in Rome"}]},
])
assert second.content[0].text == "answer: sunny in Rome", second

with client.messages.stream(model="tool-model", max_tokens=64, tools=tools,
                            messages=[{"role": "user", "content": "weather in Rome?"}]) as stream:
    final = stream.get_final_message()
use = [b for b in final.content if b.type == "tool_use"][0]
assert use.input == {"city": "Rome"} and final.stop_reason == "tool_use", final

try:
    client.messages.create(model="no-such-model", max_tokens=8,
                           messages=[{"role": "user", "content": "x"}])
    raise AssertionError("an unknown model was accepted")
except anthropic.NotFoundError as err:
    assert err.body["type"] == "error", err.body
    assert err.body["error"]["type"] == "not_found_error", err.body

# The SDK's own retry waits for the gateway's retry-after (1.5 s) on the 429, then succeeds.
retrying = anthropic.Anthropic(base_url=os.environ["GATEWAY_URL"],
                               api_key=os.environ["GATEWAY_KEY"], max_retries=2)
started = time.monotonic()
m = retrying.messages.create(model="flaky-model", max_tokens=16,
                             messages=[{"role": "user", "content": "again"}])
waited = time.monotonic() - started
assert m.content[0].text == "flaky: again", m
assert waited >= 1.4, waited

print("ok")
