"""What every SDK script of tests/tests/sdk.rs shares: the environment it is given and the
one JSON report it prints.

Each call is recorded as {"name", "model", "usage", "expect", ...}: `usage` is what the SDK
itself returned ({"input", "output"}, or null when the SDK saw none), `expect` what the
mock upstream bills for that request by its rules (input = words of the prompt, output =
the requested maximum). Each refusal is recorded as {"name", "type", "status", "code"}: the
SDK's exception class and what it carried. Anything unexpected is recorded, never raised,
so one broken case does not hide the others.
"""

import importlib
import json
import os
import sys
import traceback

URL = os.environ["KEYGATE_URL"]
KEY = os.environ["KEYGATE_KEY"]

report = {"calls": [], "refusals": [], "failures": [], "facts": {}}


def words(text):
    return len(text.split())


def call(name, model, fn, expect):
    """Runs one SDK call; `fn` returns (usage or None, extra fields)."""
    try:
        usage, extra = fn()
        report["calls"].append(
            {"name": name, "model": model, "usage": usage, "expect": expect, **extra}
        )
    except Exception as e:  # noqa: BLE001 - the test reports it
        report["failures"].append(
            {"name": name, "error": f"{type(e).__module__}.{type(e).__name__}: {e}",
             "trace": traceback.format_exc(limit=3)}
        )


def public_name(cls):
    """`openai.AuthenticationError` rather than `openai._exceptions.AuthenticationError`:
    the name users catch, if the package exports the very class there."""
    public = ".".join(p for p in cls.__module__.split(".") if not p.startswith("_"))
    try:
        if getattr(importlib.import_module(public), cls.__name__, None) is cls:
            return f"{public}.{cls.__name__}"
    except ImportError:
        pass
    return f"{cls.__module__}.{cls.__name__}"


def refusal(name, fn, describe):
    """Runs one call that must fail; `describe(exc)` gives its status and code."""
    try:
        result = fn()
        report["failures"].append({"name": name, "error": f"no error raised: {result!r}"[:500]})
    except Exception as e:  # noqa: BLE001
        status, code = describe(e)
        report["refusals"].append(
            {"name": name, "type": public_name(type(e)),
             "status": status, "code": code, "message": str(e)[:300]}
        )


def done():
    json.dump(report, sys.stdout)
    sys.stdout.write("\n")
