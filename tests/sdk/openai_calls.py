"""The OpenAI Python SDK through keygate: chat (plain, streamed with and without
stream_options), Responses (plain, streamed), Embeddings, models.list, and its typed errors."""

import openai
from openai import OpenAI

from common import KEY, URL, call, done, os, refusal, report, words

MODEL = "gpt-4o-mini"
P_CHAT = "hello from the openai python sdk"
P_STREAM = "a streamed chat without stream options please"
P_STREAM_USAGE = "a streamed chat that asks for its usage itself"
P_RESP = "one plain responses api call"
P_RESP_STREAM = "a streamed responses api call of eight words"
client = OpenAI(base_url=URL + "/v1", api_key=KEY, max_retries=0, timeout=20)
report["facts"]["sdk"] = f"openai {openai.__version__}"


def chat_usage(u):
    return None if u is None else {"input": u.prompt_tokens, "output": u.completion_tokens}


def chat():
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": P_CHAT}], max_tokens=3)
    return chat_usage(r.usage), {"id": r.id, "text": r.choices[0].message.content}


call("chat", MODEL, chat, {"input": words(P_CHAT), "output": 3})


def chat_stream_plain():
    # No stream_options: keygate asks for usage itself and takes it back out, so the SDK
    # must see the stream it asked for: no usage anywhere, no usage-only chunk.
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": P_STREAM}], max_tokens=4,
        stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return None, {
        "text": text,
        "chunks": len(chunks),
        "chunks_with_usage": sum(1 for c in chunks if c.usage is not None),
        "chunks_without_choices": sum(1 for c in chunks if not c.choices),
        "finish_reasons": [c.choices[0].finish_reason for c in chunks
                           if c.choices and c.choices[0].finish_reason],
    }


call("chat_stream_without_stream_options", MODEL, chat_stream_plain, {"input": words(P_STREAM), "output": 4})


def chat_stream_usage():
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": P_STREAM_USAGE}], max_tokens=5,
        stream=True, stream_options={"include_usage": True}))
    usage = [c.usage for c in chunks if c.usage is not None]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return chat_usage(usage[-1] if usage else None), {
        "text": text, "chunks_with_usage": len(usage)}


call("chat_stream_with_include_usage", MODEL, chat_stream_usage, {"input": words(P_STREAM_USAGE), "output": 5})


def resp_usage(u):
    return None if u is None else {"input": u.input_tokens, "output": u.output_tokens}


def responses():
    r = client.responses.create(model=MODEL, input=P_RESP, max_output_tokens=6)
    return resp_usage(r.usage), {"id": r.id, "text": r.output_text}


call("responses", MODEL, responses, {"input": words(P_RESP), "output": 6})


def responses_stream():
    completed = None
    deltas = []
    for event in client.responses.create(model=MODEL, input=P_RESP_STREAM, max_output_tokens=7,
                                         stream=True):
        if event.type == "response.output_text.delta":
            deltas.append(event.delta)
        if event.type == "response.completed":
            completed = event.response
    if completed is None:
        raise RuntimeError("no response.completed event")
    return resp_usage(completed.usage), {"id": completed.id, "text": "".join(deltas)}


call("responses_stream", MODEL, responses_stream, {"input": words(P_RESP_STREAM), "output": 7})

EMBED = "text-embedding-3-small"
P_EMBED = ["first text to embed", "and a second one"]


def embeddings():
    r = client.embeddings.create(model=EMBED, input=P_EMBED)
    return ({"input": r.usage.prompt_tokens, "output": 0},
            {"vectors": len(r.data), "dims": len(r.data[0].embedding)})


call("embeddings", EMBED, embeddings, {"input": sum(map(words, P_EMBED)), "output": 0})

try:
    report["facts"]["models"] = sorted(m.id for m in client.models.list())
except Exception as e:  # noqa: BLE001
    report["failures"].append({"name": "models.list", "error": f"{type(e).__name__}: {e}"})


def openai_error(e):
    body = getattr(e, "body", None)
    code = body.get("code") if isinstance(body, dict) else getattr(e, "code", None)
    return getattr(e, "status_code", None), code


def chat_with(key, model=MODEL):
    c = OpenAI(base_url=URL + "/v1", api_key=key, max_retries=0, timeout=20)
    return c.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "refused"}], max_tokens=2)


refusal("unknown_key", lambda: chat_with(os.environ["KEYGATE_UNKNOWN_KEY"]), openai_error)
refusal("quota_used_up", lambda: chat_with(os.environ["KEYGATE_EXHAUSTED_KEY"]), openai_error)
refusal("model_not_allowed",
        lambda: chat_with(os.environ["KEYGATE_RESTRICTED_KEY"], "gpt-4o"), openai_error)
done()
