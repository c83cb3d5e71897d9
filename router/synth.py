"""Synthetic test data: test personnummer (generated, never real people) and envelopes.

Numbers produced here are *test numbers*: valid Luhn, born on 1 Jan–28 Dec of years 1930–2019,
with serials 980–999 (the series this project reserves for synthetic patients). They are made at
run time; none is checked into the repository.
"""

from __future__ import annotations

import csv
import hashlib
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from router.envelope import KINDS
from router.identifiers import OID_PERSONNUMMER, OID_SAMORDNINGSNUMMER, luhn_ok

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_UNITS = REPO_ROOT / "rules" / "units.csv"


def check_digit(nine: str) -> str:
    for c in "0123456789":
        if luhn_ok(nine + c):
            return c
    raise AssertionError("unreachable")


def test_personnummer(rng: random.Random, samordning: bool = False) -> str:
    """A synthetic 12-digit test personnummer (or samordningsnummer) with a valid check digit."""
    year = rng.randint(1930, 2019)
    month = rng.randint(1, 12)
    day = rng.randint(1, 28) + (60 if samordning else 0)
    serial = rng.randint(980, 999)
    nine = f"{year % 100:02d}{month:02d}{day:02d}{serial:03d}"
    return f"{year:04d}{nine[2:]}{check_digit(nine)}"


test_personnummer.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


@dataclass(frozen=True)
class Unit:
    hsa_id: str
    name: str
    care_provider_hsa_id: str
    care_provider_name: str
    area: str
    municipality: str
    unit_type: str


def load_units(path: Path = DEFAULT_UNITS) -> list[Unit]:
    with path.open(newline="", encoding="utf-8") as fh:
        return [Unit(**{k: (v or "").strip() for k, v in row.items()}) for row in csv.DictReader(fh)]


def envelope_record(
    rng: random.Random,
    sender: Unit,
    receiver: Unit,
    kind: str,
    patient: str,
    now_ms: int,
    payload: bytes | None = None,
) -> dict[str, Any]:
    """An envelope as an Avro record dict (the form the codec writes)."""
    mid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    data = payload if payload is not None else f"MSH|^~\\&|SIM|{sender.hsa_id}|SIM|{receiver.hsa_id}|{mid}".encode()
    placer = f"PO{rng.randrange(10**9):09d}" if kind in ("lab_order", "lab_result") else None
    referral = f"RF{rng.randrange(10**9):09d}" if kind == "remiss" else None
    samordning = patient[6:8] > "60"
    return {
        "message_id": mid,
        "source_message_id": f"SIM{rng.randrange(10**12)}",
        "kind": kind,
        "subtype": {"remiss": "REF^I12", "lab_order": "OML^O21", "lab_result": "ORU^R01", "info": "MDM^T02"}[kind],
        "status": None,
        "patient": {
            "id": patient,
            "id_type": "samordningsnummer" if samordning else "personnummer",
            "oid": OID_SAMORDNINGSNUMMER if samordning else OID_PERSONNUMMER,
        },
        "sender": {"unit_hsa_id": sender.hsa_id, "care_provider_hsa_id": sender.care_provider_hsa_id, "system": None},
        "receiver": {"unit_hsa_id": receiver.hsa_id, "care_provider_hsa_id": receiver.care_provider_hsa_id,
                     "system": None},
        "correlation": {"placer_order_number": placer, "filler_order_number": None,
                        "referral_id": referral, "in_reply_to": None},
        "event_time_ms": now_ms,
        "received_time_ms": now_ms,
        "source": "synth",
        "trace_id": uuid.UUID(int=rng.getrandbits(128)).hex[:16],
        "payload": {"format": "hl7v2", "content_type": None, "data": data,
                    "sha256": hashlib.sha256(data).hexdigest()},
    }


# Which receiver unit types make sense for each kind (the example routing table).
RECEIVER_TYPES = {
    "remiss": ("sjukhus", "forlossning", "primarvard", "mvc", "privat"),
    "lab_order": ("lab", "lokalt_lab", "extern_diagnostik"),
    "lab_result": ("sjukhus", "forlossning", "mvc", "primarvard", "privat"),
    "info": ("kommun", "sjukhus", "primarvard", "forlossning", "mvc", "privat"),
}


def traffic(
    rng: random.Random, units: list[Unit], now_ms: int, patients: int = 500, bad_share: float = 0.0
) -> Iterator[dict[str, Any]]:
    """Endless realistic mixed envelopes across the example units."""
    by_type: dict[str, list[Unit]] = {}
    for u in units:
        by_type.setdefault(u.unit_type, []).append(u)
    pool = [test_personnummer(rng, samordning=(i % 20 == 0)) for i in range(patients)]
    senders = [u for u in units if u.unit_type not in ("lab", "lokalt_lab", "extern_diagnostik")]
    while True:
        kind = rng.choice(KINDS)
        if rng.random() < bad_share:
            rtypes: tuple[str, ...] = ("kommun",) if kind == "lab_result" else ("lab",)
        else:
            rtypes = RECEIVER_TYPES[kind]
        receiver = rng.choice(by_type[rng.choice([t for t in rtypes if t in by_type])])
        sender = rng.choice(by_type["lab"] if kind == "lab_result" and "lab" in by_type else senders)
        yield envelope_record(rng, sender, receiver, kind, rng.choice(pool), now_ms)
