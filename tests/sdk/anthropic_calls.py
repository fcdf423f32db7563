"""The Anthropic Python SDK through keygate: messages, messages streaming, its typed errors."""

import anthropic
from anthropic import Anthropic

from common import KEY, URL, call, done, os, refusal, report, words

MODEL = "claude-sonnet-4-5"
P_MESSAGE = "hello from the anthropic python sdk"
P_STREAM = "a streamed message from the anthropic sdk please"
client = Anthropic(base_url=URL, api_key=KEY, max_retries=0, timeout=20)
report["facts"]["sdk"] = f"anthropic {anthropic.__version__}"


def usage_of(u):
    return {"input": u.input_tokens, "output": u.output_tokens}


def message():
    m = client.messages.create(model=MODEL, max_tokens=3,
                               messages=[{"role": "user", "content": P_MESSAGE}])
    return usage_of(m.usage), {"id": m.id, "text": m.content[0].text}


call("messages", MODEL, message, {"input": words(P_MESSAGE), "output": 3})


def message_stream():
    with client.messages.stream(model=MODEL, max_tokens=4,
                                messages=[{"role": "user", "content": P_STREAM}]) as stream:
        text = "".join(stream.text_stream)
        m = stream.get_final_message()
    return usage_of(m.usage), {"id": m.id, "text": text}


call("messages_stream", MODEL, message_stream, {"input": words(P_STREAM), "output": 4})


def anthropic_error(e):
    body = getattr(e, "body", None)
    err = body.get("error") if isinstance(body, dict) else None
    code = err.get("code") if isinstance(err, dict) else None
    return getattr(e, "status_code", None), code


def message_with(key, model=MODEL):
    c = Anthropic(base_url=URL, api_key=key, max_retries=0, timeout=20)
    return c.messages.create(model=model, max_tokens=2,
                             messages=[{"role": "user", "content": "refused"}])


refusal("unknown_key", lambda: message_with(os.environ["KEYGATE_UNKNOWN_KEY"]), anthropic_error)
refusal("quota_used_up", lambda: message_with(os.environ["KEYGATE_EXHAUSTED_KEY"]),
        anthropic_error)
refusal("model_not_allowed", lambda: message_with(os.environ["KEYGATE_RESTRICTED_KEY"]),
        anthropic_error)
done()
