"""The Google Gen AI Python SDK through keygate (http_options base_url = Envoy, the key as
api_key): generate_content, generate_content_stream, and its errors.ClientError."""

import google.genai
from google import genai
from google.genai import errors, types

from common import KEY, URL, call, done, os, refusal, report, words

MODEL = "gemini-2.5-flash"
P_GENERATE = "hello from the google gen ai python sdk"
P_STREAM = "a streamed generation from the google sdk please"


def client_for(key):
    return genai.Client(api_key=key, http_options=types.HttpOptions(base_url=URL, timeout=20_000))


client = client_for(KEY)
report["facts"]["sdk"] = f"google-genai {google.genai.__version__}"
report["facts"]["api_version"] = client._api_client._http_options.api_version


def usage_of(m):
    return None if m is None else {"input": m.prompt_token_count,
                                   "output": m.candidates_token_count}


def generate():
    r = client.models.generate_content(
        model=MODEL, contents=P_GENERATE,
        config=types.GenerateContentConfig(max_output_tokens=3))
    return usage_of(r.usage_metadata), {"text": r.text}


call("generate_content", MODEL, generate, {"input": words(P_GENERATE), "output": 3})


def generate_stream():
    chunks = list(client.models.generate_content_stream(
        model=MODEL, contents=P_STREAM,
        config=types.GenerateContentConfig(max_output_tokens=4)))
    text = "".join(c.text or "" for c in chunks)
    return usage_of(chunks[-1].usage_metadata), {"text": text, "chunks": len(chunks)}


call("generate_content_stream", MODEL, generate_stream, {"input": words(P_STREAM), "output": 4})


def genai_error(e):
    # ClientError.code is the HTTP status; keygate's own code is in the body it kept.
    details = getattr(e, "details", None)
    err = details.get("error") if isinstance(details, dict) else None
    return getattr(e, "code", None), err.get("code") if isinstance(err, dict) else None


def generate_with(key, model=MODEL):
    c = client_for(key)  # held: a Client closes its connections when collected
    return c.models.generate_content(model=model, contents="refused")


refusal("unknown_key", lambda: generate_with(os.environ["KEYGATE_UNKNOWN_KEY"]), genai_error)
refusal("quota_used_up", lambda: generate_with(os.environ["KEYGATE_EXHAUSTED_KEY"]), genai_error)
refusal("model_not_allowed", lambda: generate_with(os.environ["KEYGATE_RESTRICTED_KEY"]),
        genai_error)
done()
