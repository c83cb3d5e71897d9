"""Routing-engine benchmark (not a test): decisions per second on one core.

Small = the example rule set in rules/. Large = the same plan with 10,000 generated units and
1,000 generated rules (per-etapp rules on specific receivers, some with sender conditions).
Prints per-run figures, then one JSON line: {"small_decisions_per_s": …, "large_decisions_per_s": …}
(medians of 5 runs, same process, interleaved so machine noise hits both alike).
"The loop alone" is the benchmark loop without the engine; it shows that both message lists cost
the same to walk (an earlier version built them on a fragmented heap and the large list alone
walked 1.2-1.5x slower: that was the harness, not the engine).
"""

from __future__ import annotations

import csv
import gc
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from router.envelope import KINDS  # noqa: E402
from router.rules.engine import Engine  # noqa: E402
from router.rules.load import load_rules  # noqa: E402
from router.synth import load_units  # noqa: E402

N_MESSAGES = 200_000
RUNS = 5
INSTANTS = [1_700_000_000_000 + i * 20_000_000_000 for i in range(8)]  # 2023-11 to 2028-07, every go-live between


def generate_large(dst: Path, n_units: int = 10_000, n_rules: int = 1_000, seed: int = 42) -> Path:
    rng = random.Random(seed)
    shutil.copytree(REPO / "rules", dst)
    base = load_units()
    rows = []
    for i in range(n_units):
        proto = rng.choice(base)
        org = proto.care_provider_hsa_id
        rows.append([f"SE{rng.randrange(10**9, 10**10)}-G{i:09d}", f"Enhet {i}", org, "Vårdgivare", proto.area,
                     proto.municipality, proto.unit_type])
    with (dst / "units.csv").open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["hsa_id", "name", "care_provider_hsa_id", "care_provider_name", "area", "municipality",
                    "unit_type"])
        w.writerows(rows)
    area_etapp = {"norra": "etapp-3-norra-ostra", "ostra": "etapp-3-norra-ostra", "vastra": "etapp-4-vastra"}
    by_etapp: dict[str, list[list[str]]] = {}
    pd1 = {"Borås", "Bollebygd", "Herrljunga", "Mark", "Svenljunga", "Tranemo", "Ulricehamn", "Vårgårda"}
    for r in rows:
        e = ("etapp-1-sodra-pd1" if r[5] in pd1 else "etapp-2-sodra") if r[4] == "sodra" else area_etapp.get(r[4])
        if e:
            by_etapp.setdefault(e, []).append(r)
    files: dict[str, list[str]] = {e: [f"etapp: {e}", "routes:"] for e in by_etapp}
    types = ["sjukhus", "primarvard", "kommun", "privat", "mvc", "forlossning"]
    for i in range(n_rules):
        e = rng.choice(sorted(by_etapp))
        receivers = [r[0] for r in rng.sample(by_etapp[e], 10)]
        lines = [f"  - id: gen-{i}", f"    kind: [{rng.choice(KINDS)}]", f"    priority: {1000 + i}",
                 f"    receiver: {{hsa_id: [{', '.join(receivers)}]}}"]
        if rng.random() < 0.3:
            lines.append(f"    sender: {{unit_type: [{rng.choice(types)}]}}")
        lines += ["    live: [millennium]", "    not_live: [journal]"]
        files[e] += lines
    for e, lines in files.items():
        (dst / "routes" / f"{e}.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return dst


def messages(engine: Engine, n: int, seed: int, ids: list[str] | None = None) -> list[dict]:
    """Envelopes as the worker's decoder makes them: the HSA-ids are new string objects, not the
    unit directory's own (which would let every dict lookup succeed on identity)."""
    rng = random.Random(seed)
    ids = ids or sorted(engine.units)
    return [{"kind": rng.choice(KINDS), "subtype": None, "receiver": {"unit_hsa_id": rng.choice(ids).encode().decode()},
             "sender": {"unit_hsa_id": rng.choice(ids).encode().decode(), "care_provider_hsa_id": None}}
            for _ in range(n)]


def engines_and_messages() -> tuple[Engine, Engine, list[dict], list[dict]]:
    """The small and the large engine, and their message lists built back to back on a settled heap
    (for the benchmarks that compare other loops with ``rate`` on the same lists)."""
    small = Engine(load_rules(REPO / "rules"))
    with tempfile.TemporaryDirectory() as tmp:
        large = Engine(load_rules(generate_large(Path(tmp) / "rules")))
    gc.collect()
    return small, large, messages(small, N_MESSAGES, 1), messages(large, N_MESSAGES, 2)


def harness(msgs: list[dict]) -> float:
    """The loop alone (reads the fields decide reads first): what the message list itself costs."""
    t0 = time.perf_counter()
    for m in msgs:
        m["kind"], m["receiver"]["unit_hsa_id"]
    return len(msgs) / (time.perf_counter() - t0)


def rate(engine: Engine, msgs: list[dict], instants: list[int]) -> float:
    decide = engine.decide
    states: dict[str, str] = {}
    t0 = time.perf_counter()
    for i, m in enumerate(msgs):
        decide(m, instants[i & 7], states)
    return len(msgs) / (time.perf_counter() - t0)


def main() -> None:
    small = Engine(load_rules(REPO / "rules"))
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        large = Engine(load_rules(generate_large(Path(tmp) / "rules")))
        compile_s = time.perf_counter() - t
    n_rules = sum(len(m.routes) for _p, m, _r in large.rules.routes)
    print(f"small: {len(small.units)} units, {sum(len(m.routes) for _p, m, _r in small.rules.routes)} rules; "
          f"large: {len(large.units)} units, {n_rules} rules (load+compile {compile_s:.1f} s)")
    instants = INSTANTS
    gc.collect()  # the message lists are built back to back on a settled heap, so that both lie alike in memory
    ms, ml = messages(small, N_MESSAGES, 1), messages(large, N_MESSAGES, 2)
    rate(small, ms, instants), rate(large, ml, instants)  # warm up (fills the decision memo)
    rs, rl, hs, hl = [], [], [], []
    for run in range(RUNS):
        rs.append(rate(small, ms, instants))
        rl.append(rate(large, ml, instants))
        hs.append(harness(ms))
        hl.append(harness(ml))
        print(f"run {run + 1}: small {rs[-1]:,.0f}/s, large {rl[-1]:,.0f}/s, cost ratio {rs[-1] / rl[-1]:.2f} "
              f"(the loop alone: small {hs[-1]:,.0f}/s, large {hl[-1]:,.0f}/s)")
    # The large rule set again, with traffic to 191 of its receivers (as many as the small set has):
    # separates the cost of more rules from the CPU-cache cost of a 10,000-unit working set.
    rng = random.Random(3)
    few_ids = rng.sample(sorted(large.units), len(small.units))
    few = messages(large, N_MESSAGES, 3, few_ids)
    rate(large, few, instants)
    rf, rs_few = [], []  # interleaved with small runs of their own, so that each ratio pairs one run
    for _run in range(RUNS):
        rs_few.append(rate(small, ms, instants))
        rf.append(rate(large, few, instants))
    s, lg, lf = statistics.median(rs), statistics.median(rl), statistics.median(rf)
    pair = statistics.median(a / b for a, b in zip(rs, rl, strict=True))
    pair_few = statistics.median(a / b for a, b in zip(rs_few, rf, strict=True))
    print(f"large rule set, traffic to {len(few_ids)} receivers: {lf:,.0f}/s ({pair_few:.2f}x the small cost, "
          "the median of the runs' own ratios)")
    print(f"median of the {RUNS} interleaved runs: small {s:,.0f}/s, large {lg:,.0f}/s; large/small cost per "
          f"decision {s / lg:.2f}x as the ratio of the medians, {pair:.2f}x as the median of the runs' own ratios; "
          f"the loop alone: small {statistics.median(hs):,.0f}/s, large {statistics.median(hl):,.0f}/s")
    print(json.dumps({"small_decisions_per_s": round(s), "large_decisions_per_s": round(lg),
                      "large_over_small_cost": round(s / lg, 3), "large_over_small_cost_run_median": round(pair, 3),
                      "large_rules_191_receivers_decisions_per_s": round(lf)}))


if __name__ == "__main__":
    main()
