"""Drives a running Aegis gateway with the official `openai` Python SDK, unchanged, as a user would.

Environment: AEGIS_GATEWAY_URL (e.g. http://127.0.0.1:8080/v1), AEGIS_KEY (a key with the
proxy scope), AEGIS_KEY_NO_PROXY (a key without it), AEGIS_KEY_LIMITED (a key allowed one
request per minute). Prints one JSON object: the record id of every request it made, by case.
Exits non-zero (with a traceback) on any unexpected behaviour.
"""

import json
import os
import sys

import openai

base_url = os.environ["AEGIS_GATEWAY_URL"]
client = openai.OpenAI(base_url=base_url, api_key=os.environ["AEGIS_KEY"], max_retries=0)
records = {}

# Chat, plain.
raw = client.chat.completions.with_raw_response.create(
    model="mock-1", messages=[{"role": "user", "content": "hello"}]
)
chat = raw.parse()
assert chat.choices[0].message.role == "assistant", chat
assert chat.choices[0].message.content, chat
assert chat.usage.completion_tokens == 6, chat.usage
records["chat"] = raw.headers["x-aegis-record-id"]

# Chat, streamed, with usage.
with client.chat.completions.with_streaming_response.create(
    model="mock-1",
    messages=[{"role": "user", "content": "hello"}],
    stream=True,
    stream_options={"include_usage": True},
) as response:
    records["chat_stream"] = response.headers["x-aegis-record-id"]
    pieces, usage = [], None
    for chunk in response.parse():
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        if chunk.usage:
            usage = chunk.usage
assert len(pieces) == 6, pieces
assert usage is not None and usage.completion_tokens == 6, usage

# Legacy completions.
raw = client.completions.with_raw_response.create(model="mock-1", prompt="say something")
completion = raw.parse()
assert completion.choices[0].text, completion
records["completion"] = raw.headers["x-aegis-record-id"]

# Embeddings.
raw = client.embeddings.with_raw_response.create(model="mock-embed", input=["a", "b", "c"])
embeddings = raw.parse()
assert len(embeddings.data) == 3, embeddings
assert len(embeddings.data[0].embedding) > 0
records["embeddings"] = raw.headers["x-aegis-record-id"]

# Models.
models = [model.id for model in client.models.list()]
assert "mock-1" in models, models


def expect(exception, call, case):
    try:
        call()
    except exception as error:
        records[case] = error.response.headers["x-aegis-record-id"]
        return error
    raise AssertionError(f"{case}: expected {exception.__name__}")


chat_call = dict(model="mock-1", messages=[{"role": "user", "content": "hi"}])
expect(
    openai.AuthenticationError,
    lambda: openai.OpenAI(base_url=base_url, api_key="sk-wrong", max_retries=0).chat.completions.create(**chat_call),
    "unauthenticated",
)
expect(
    openai.PermissionDeniedError,
    lambda: openai.OpenAI(base_url=base_url, api_key=os.environ["AEGIS_KEY_NO_PROXY"], max_retries=0).chat.completions.create(**chat_call),
    "permission_denied",
)
limited = openai.OpenAI(base_url=base_url, api_key=os.environ["AEGIS_KEY_LIMITED"], max_retries=0)
limited.chat.completions.create(**chat_call)
error = expect(openai.RateLimitError, lambda: limited.chat.completions.create(**chat_call), "rate_limited")
assert int(error.response.headers["retry-after"]) >= 1

json.dump(records, sys.stdout)
