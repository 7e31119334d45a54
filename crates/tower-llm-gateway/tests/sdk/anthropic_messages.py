"""The official anthropic SDK against the gateway's /v1/messages: plain and streamed, a tool
call, and an error in Anthropic's shape.

Env: GATEWAY_URL, GATEWAY_KEY."""
import os

import anthropic

client = anthropic.Anthropic(base_url=os.environ["GATEWAY_URL"],
                             api_key=os.environ["GATEWAY_KEY"], max_retries=0)

m = client.messages.create(model="gpt-4o-mini", max_tokens=64, system="be brief",
                           messages=[{"role": "user", "content": "plain"}])
assert m.type == "message" and m.role == "assistant", m
assert m.content[0].type == "text" and m.content[0].text == "py: plain", m
assert m.stop_reason == "end_turn", m
assert m.usage.output_tokens > 0, m

with client.messages.stream(model="gpt-4o-mini", max_tokens=64,
                            messages=[{"role": "user", "content": "streamed"}]) as stream:
    text = "".join(stream.text_stream)
    final = stream.get_final_message()
assert text == "py: streamed", text
assert final.content[0].text == "py: streamed", final
assert final.stop_reason == "end_turn", final

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

print("ok")
