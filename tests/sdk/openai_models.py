"""client.models.list() with the key of KEYGATE_KEY: the ids it lists, or the error."""

from openai import OpenAI

from common import KEY, URL, done, report

client = OpenAI(base_url=URL + "/v1", api_key=KEY, max_retries=0, timeout=20)
try:
    report["facts"]["models"] = sorted(m.id for m in client.models.list())
except Exception as e:  # noqa: BLE001
    report["failures"].append({"name": "models.list",
                               "error": f"{type(e).__module__}.{type(e).__name__}: {e}"})
done()
