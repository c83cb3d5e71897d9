"""The routing engine of another git revision against this one, in one process (not a test).

    python bench/engine_ab.py REV        e.g. python bench/engine_ab.py HEAD~1

Separate processes lay the message lists and the engine's index out differently in memory, and
that alone moved bench/engine.py's large/small ratio by 0.1-0.2 between runs of one code version.
Here both versions compile the same rule sets and decide the same message lists in one process,
interleaved, the order reversed every other run. Only ``router/rules/engine.py`` is taken from REV
(loaded as a module of its own); everything it imports (loader, Decision) is this tree's.
Prints each version's median ns per decision on both sets (bench/engine.py's sets and messages)
and its large/small ratio; last line one JSON object.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.engine import generate_large, messages, rate  # noqa: E402
from router.rules import engine as this_engine  # noqa: E402
from router.rules.load import load_rules  # noqa: E402

RUNS = 7
N_MESSAGES = 200_000


def engine_of(rev: str, tmp: Path) -> ModuleType:
    try:
        source = subprocess.run(["git", "show", f"{rev}:router/rules/engine.py"], cwd=REPO, check=True,
                                capture_output=True).stdout
    except subprocess.CalledProcessError as exc:
        sys.exit(f"engine_ab: no router/rules/engine.py at {rev!r}: {exc.stderr.decode().strip()}")
    path = tmp / "engine_at_rev.py"
    path.write_bytes(source)
    spec = importlib.util.spec_from_file_location("engine_at_rev", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["engine_at_rev"] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def main(rev: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        other = engine_of(rev, Path(tmp))
        small_rules = load_rules(REPO / "rules")
        large_rules = load_rules(generate_large(Path(tmp) / "rules"))
    versions = {rev: other, "this tree": this_engine}
    engines = {(v, size): m.Engine(rules) for v, m in versions.items()
               for size, rules in (("small", small_rules), ("large", large_rules))}
    instants = [1_700_000_000_000 + i * 20_000_000_000 for i in range(8)]
    gc.collect()  # both message lists built back to back on a settled heap, as bench/engine.py does
    msgs = {"small": messages(engines["this tree", "small"], N_MESSAGES, 1),
            "large": messages(engines["this tree", "large"], N_MESSAGES, 2)}
    for (_v, size), e in engines.items():
        rate(e, msgs[size], instants)  # warm up (fills the decision memo)
    ns: dict[tuple[str, str], list[float]] = {k: [] for k in engines}
    for run in range(RUNS):
        order = list(engines) if run % 2 == 0 else list(reversed(list(engines)))
        for key in order:
            ns[key].append(1e9 / rate(engines[key], msgs[key[1]], instants))
        print(f"run {run + 1}: " + ", ".join(f"{v} {size} {ns[v, size][-1]:.0f} ns" for v, size in engines),
              flush=True)
    summary = {}
    for v in versions:
        s, lg = statistics.median(ns[v, "small"]), statistics.median(ns[v, "large"])
        print(f"{v}: median small {s:.0f} ns, large {lg:.0f} ns per decision, large/small {lg / s:.3f}")
        tag = "other" if v == rev else "this"
        summary.update({f"{tag}_small_ns": round(s), f"{tag}_large_ns": round(lg), f"{tag}_ratio": round(lg / s, 3)})
    print(json.dumps({"rev": rev, **summary}))


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] in ("-h", "--help"):
        sys.exit("usage: python bench/engine_ab.py REV   (a git revision whose router/rules/engine.py to compare)")
    main(sys.argv[1])
