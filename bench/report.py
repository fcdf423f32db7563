#!/usr/bin/python3
"""`make bench`'s last step: bench/results/REPORT.md and its plots, from what the
benchmark binaries wrote (filter.md and filter.json, filter-upstream.md, streams.md,
reconciliation.md).

Run with Debian's python3 and python3-matplotlib (`make setup` installs them).
"""
import datetime
import json
import os
import platform
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RESULTS = sys.argv[1] if len(sys.argv) > 1 else "bench/results"
PEER_KEYS = 10_000  # the key count every configuration, peers included, is measured at


def machine():
    model = "unknown CPU"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} cores, {model}, {platform.system()} {platform.release()}"


def save(fig, name):
    fig.tight_layout()
    fig.savefig(os.path.join(RESULTS, name), dpi=110)
    plt.close(fig)
    return name


def plots(rows):
    at = [r for r in rows if r["keys"] == PEER_KEYS]
    names = [r["variant"] for r in at]
    made = []

    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.27
    for i, (key, label) in enumerate([("p50_us", "p50"), ("p90_us", "p90"), ("p99_us", "p99")]):
        xs = [n + (i - 1) * width for n in range(len(at))]
        ax.bar(xs, [r[key] or 0 for r in at], width, label=label)
    ax.set_xticks(range(len(at)), names, rotation=20, ha="right")
    ax.set_ylabel("latency, us (fixed rate, open loop)")
    ax.set_title(f"Latency per configuration, {PEER_KEYS:,} keys")
    ax.legend()
    made.append(save(fig, "latency.png"))

    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.bar(range(len(at)), [r["rps"] or 0 for r in at], color="#2563eb")
    ax.set_xticks(range(len(at)), names, rotation=20, ha="right")
    ax.set_ylabel("requests per second at saturation")
    ax.set_title(f"Throughput per configuration, {PEER_KEYS:,} keys, Envoy on one core")
    made.append(save(fig, "throughput.png"))

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for variant in ("keygate", "keygate native", "no filter"):
        points = sorted((r["keys"], r["rss_mb"]) for r in rows if r["variant"] == variant)
        if points:
            ax.plot([max(k, 1) for k, _ in points], [m for _, m in points], marker="o", label=variant)
    ax.set_xscale("log")
    ax.set_xlabel("keys (log scale; 0 drawn at 1)")
    ax.set_ylabel("Envoy resident memory, MB")
    ax.set_title("Memory against key count")
    ax.legend()
    made.append(save(fig, "memory.png"))
    return made


def section(name):
    path = os.path.join(RESULTS, name)
    if not os.path.exists(path):
        return f"\n({name} is missing: its benchmark did not run)\n"
    with open(path) as f:
        text = f.read()
    # Each part's title becomes a section of the report.
    return "\n" + text.replace("\n## ", "\n### ").replace("# ", "## ", 1)


def main():
    with open(os.path.join(RESULTS, "filter.json")) as f:
        rows = json.load(f)
    images = plots(rows)
    today = datetime.date.today().isoformat()
    parts = [
        "# keygate benchmark report\n",
        f"{today}, `make bench` on {machine()}. Loopback only; Envoy's worker and the load "
        "generator pinned to separate cores; configurations interleaved round by round, "
        "medians with (min-max).\n",
        "\n".join(f"![{name}]({name})" for name in images) + "\n",
        section("filter.md"),
        section("filter-upstream.md"),
        section("streams.md"),
        section("reconciliation.md"),
    ]
    with open(os.path.join(RESULTS, "REPORT.md"), "w") as f:
        f.write("\n".join(parts))
    print(f"wrote {RESULTS}/REPORT.md and {', '.join(images)}")


if __name__ == "__main__":
    main()
