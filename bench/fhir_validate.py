"""FHIR inbound validation and mapping cost per resource (not a test; output in bench/fhir_validate.out).

Validates (fhir.resources models plus samex's binding checks) and maps a ServiceRequest, a Task
and a 10-entry transaction Bundle to envelopes, in process. Medians of 5 runs of 500 repetitions.
Last line: {"service_request_ms", "task_ms", "bundle_entry_ms"}.
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson

from connectors.fhir import map_bundle, map_resource, validate
from router.synth import test_personnummer
from tests.test_fhir import service_request, task

REPS, RUNS = 500, 5


def per_call_ms(fn, reps: int = REPS) -> float:
    fn()  # import and warm up
    runs = []
    for _ in range(RUNS):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        runs.append((time.perf_counter() - t0) / reps * 1000)
    return statistics.median(runs)


def main() -> None:
    pnr = test_personnummer(random.Random(5))  # a synthetic test personnummer
    sr, tk = service_request(pnr), task(pnr)
    bundle = {"resourceType": "Bundle", "type": "transaction",
              "entry": [{"resource": service_request(pnr, rid=f"sr-{i}"),
                         "request": {"method": "POST", "url": "ServiceRequest"}} for i in range(10)]}
    sr_raw, tk_raw = orjson.dumps(sr), orjson.dumps(tk)

    def one_sr() -> None:
        validate(sr)
        map_resource(sr, sr_raw, "millennium")

    def one_task() -> None:
        validate(tk)
        map_resource(tk, tk_raw, "millennium")

    def one_bundle() -> None:
        validate(bundle)
        map_bundle(bundle, "millennium")

    sr_ms = per_call_ms(one_sr)
    task_ms = per_call_ms(one_task)
    entry_ms = per_call_ms(one_bundle, REPS // 10) / 10
    print(f"ServiceRequest validate+map: {sr_ms:.3f} ms; Task: {task_ms:.3f} ms; "
          f"per entry of a 10-entry transaction Bundle: {entry_ms:.3f} ms (medians of {RUNS} runs)")
    print(json.dumps({"service_request_ms": round(sr_ms, 3), "task_ms": round(task_ms, 3),
                      "bundle_entry_ms": round(entry_ms, 3)}))


if __name__ == "__main__":
    main()
