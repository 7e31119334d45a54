"""The official openai SDK against the gateway: chat plain and streamed, refusals, the tool
loop streamed (by hand and with the SDK's stream helper) and not, embeddings with the SDK's
defaults (base64), n > 1 refused, an unknown route.

Env: GATEWAY_URL (http://host:port), GATEWAY_KEY, EXPECTED_ALPHA, REFUSAL. Exits non-zero on
the first failure."""
import json
import os
import struct
import base64

import openai

url = os.environ["GATEWAY_URL"]
client = openai.OpenAI(base_url=url + "/v1", api_key=os.environ["GATEWAY_KEY"], max_retries=0)

# Plain chat, with the request id the gateway gives every answer.
raw = client.chat.completions.with_raw_response.create(
    model="gpt-4o-mini", messages=[{"role": "user", "content": "plain"}])
assert raw.headers.get("x-request-id", "").startswith("req_"), raw.headers
r = raw.parse()
assert r.choices[0].message.content == "py: plain", r
assert r.choices[0].message.role == "assistant", r

# Streamed chat, with the usage chunk asked for.
usage = None
text = ""
for chunk in client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "streamed"}], stream=True,
        stream_options={"include_usage": True}):
    if chunk.choices:
        text += chunk.choices[0].delta.content or ""
    if chunk.usage is not None:
        usage = chunk.usage
assert text == "py: streamed", text
assert usage is not None and usage.completion_tokens > 0, usage

# The stream helper accumulates the same text.
with client.chat.completions.stream(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "helper"}]) as stream:
    final = stream.get_final_completion()
assert final.choices[0].message.content == "py: helper", final

# A refusal, as OpenAI sends it: in `refusal`, with `content` null, plain and streamed.
refusal = os.environ["REFUSAL"]
ask_refusal = [{"role": "user", "content": "please refuse"}]
r = client.chat.completions.create(model="tool-model", messages=ask_refusal)
assert r.choices[0].message.refusal == refusal, r
assert r.choices[0].message.content is None, r
assert r.choices[0].finish_reason == "stop", r
raw = client.chat.completions.with_raw_response.create(
    model="tool-model", messages=ask_refusal, stream=True)
assert raw.headers.get("x-request-id", "").startswith("req_"), raw.headers
pieces = ""
for chunk in raw.parse():
    if chunk.choices:
        assert chunk.choices[0].delta.content is None, chunk
        pieces += chunk.choices[0].delta.refusal or ""
assert pieces == refusal, pieces
with client.chat.completions.stream(model="tool-model", messages=ask_refusal) as stream:
    final = stream.get_final_completion()
assert final.choices[0].message.refusal == refusal, final
assert final.choices[0].message.content is None, final

tools = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}]

def run_tool(call):
    args = json.loads(call["function"]["arguments"])
    return "sunny in " + args["city"]

# The tool loop, not streamed: the SDK's own message object is sent back as is.
messages = [{"role": "user", "content": "weather in Paris?"}]
first = client.chat.completions.create(model="tool-model", messages=messages, tools=tools)
message = first.choices[0].message
assert first.choices[0].finish_reason == "tool_calls", first
assert message.content is None, message  # null, not "", with tool calls
assert message.tool_calls[0].function.name == "get_weather", message
messages.append(message.model_dump(exclude_none=True))
for call in message.tool_calls:
    messages.append({"role": "tool", "tool_call_id": call.id,
                     "content": run_tool(call.model_dump())})
second = client.chat.completions.create(model="tool-model", messages=messages, tools=tools)
assert second.choices[0].message.content == "answer: sunny in Paris", second

# The tool loop, streamed: the assistant message accumulated from the deltas, as the SDK's
# streamed-tool examples build it, carries the tool calls without a role.
messages = [{"role": "user", "content": "weather in Oslo?"}]
calls = {}
for chunk in client.chat.completions.create(
        model="tool-model", messages=messages, tools=tools, stream=True):
    if not chunk.choices:
        continue
    for delta in chunk.choices[0].delta.tool_calls or []:
        entry = calls.setdefault(delta.index, {"id": "", "type": "function",
                                               "function": {"name": "", "arguments": ""}})
        if delta.id:
            entry["id"] = delta.id
        if delta.function and delta.function.name:
            entry["function"]["name"] += delta.function.name
        if delta.function and delta.function.arguments:
            entry["function"]["arguments"] += delta.function.arguments
assert calls, "the stream carried tool calls"
accumulated = {"content": None, "tool_calls": [calls[i] for i in sorted(calls)]}
messages.append(accumulated)
for call in accumulated["tool_calls"]:
    messages.append({"role": "tool", "tool_call_id": call["id"], "content": run_tool(call)})
text = ""
for chunk in client.chat.completions.create(
        model="tool-model", messages=messages, tools=tools, stream=True):
    if chunk.choices:
        text += chunk.choices[0].delta.content or ""
assert text == "answer: sunny in Oslo", text

# The tool loop with the SDK's stream helper: the message it accumulates is sent back.
messages = [{"role": "user", "content": "weather in Lima?"}]
with client.chat.completions.stream(model="tool-model", messages=messages, tools=tools) as stream:
    final = stream.get_final_completion()
message = final.choices[0].message
assert final.choices[0].finish_reason == "tool_calls", final
assert message.tool_calls[0].function.name == "get_weather", message
messages.append(message.model_dump(exclude_none=True))
for call in message.tool_calls:
    messages.append({"role": "tool", "tool_call_id": call.id,
                     "content": run_tool(call.model_dump())})
with client.chat.completions.stream(model="tool-model", messages=messages, tools=tools) as stream:
    final = stream.get_final_completion()
assert final.choices[0].message.content == "answer: sunny in Lima", final

# Embeddings with the SDK's defaults: it asks for base64 and decodes it.
e = client.embeddings.create(model="text-embedding-3-small", input=["alpha", "beta"])
assert len(e.data) == 2 and len(e.data[0].embedding) > 0, e
expected = [float(x) for x in json.loads(os.environ["EXPECTED_ALPHA"])]
assert all(abs(a - b) < 1e-6 for a, b in zip(e.data[0].embedding, expected)), e.data[0].embedding[:4]
floats = client.embeddings.create(model="text-embedding-3-small", input="alpha",
                                  encoding_format="float")
assert floats.data[0].embedding == e.data[0].embedding

# n > 1 is refused, not silently cut to one choice.
try:
    client.chat.completions.create(model="gpt-4o-mini", n=2,
                                   messages=[{"role": "user", "content": "two"}])
    raise AssertionError("n=2 was accepted")
except openai.BadRequestError as err:
    assert "`n`" in str(err), err
    assert err.response.headers.get("x-request-id"), err.response.headers

# A route the gateway does not serve: an error the SDK can read, with the request id.
try:
    client.get("/no-such-route", cast_to=object)
    raise AssertionError("an unknown route answered")
except openai.NotFoundError as err:
    assert err.body["code"] == "unknown_url", err.body
    assert err.body["request_id"] == err.response.headers["x-request-id"], err.body

print("ok")
