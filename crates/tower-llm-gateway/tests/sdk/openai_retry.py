"""The openai SDK's own retry honours the gateway's 429 and its retry-after: the first call
is answered 429 (retry-after-ms), the SDK waits and retries, the second succeeds.

Env: GATEWAY_URL, GATEWAY_KEY."""
import os
import time

import openai

client = openai.OpenAI(base_url=os.environ["GATEWAY_URL"] + "/v1",
                       api_key=os.environ["GATEWAY_KEY"], max_retries=2)
started = time.monotonic()
r = client.chat.completions.create(model="flaky-model",
                                   messages=[{"role": "user", "content": "again"}])
waited = time.monotonic() - started
assert r.choices[0].message.content == "flaky: again", r
# The hint was 1.5 s: the SDK waited for it rather than its own 0.5 s first backoff.
assert waited >= 1.4, waited
print("ok")
