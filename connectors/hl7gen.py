"""Realistic synthetic HL7 v2 traffic (ER7) of every kind from the example units.

Patients are test personnummer from :func:`router.synth.test_personnummer` (serials 980-999).
Lab results answer earlier lab orders of the same patient (same placer order number) when there
is one. About a quarter of the messages are ISO 8859-1 encoded (MSH-18 ``8859/1``).
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterator
from dataclasses import dataclass

from connectors.hl7v2 import MSH18_OF, escape
from router.identifiers import OID_PERSONNUMMER, OID_SAMORDNINGSNUMMER
from router.synth import RECEIVER_TYPES, Unit, test_personnummer
from router.timeutil import STOCKHOLM

SENDING_APP = {"sjukhus": "MELIOR", "forlossning": "OBSTETRIX", "mvc": "OBSTETRIX", "primarvard": "ASYNJA",
               "privat": "PRIVAT-EHR", "kommun": "SAMSA", "lab": "REGIONLAB-LIS", "lokalt_lab": "LABCENTER",
               "extern_diagnostik": "SECTRA-IDS7"}
TESTS = [("NPU01685", "P-Kalium", "mmol/L", "3.5-4.4"), ("NPU02902", "B-Leukocyter", "x10*9/L", "3.5-8.8"),
         ("NPU19748", "P-CRP", "mg/L", "<5"), ("NPU02319", "B-Hemoglobin", "g/L", "117-153"),
         ("NPU03429", "P-Natrium", "mmol/L", "137-145"), ("NPU04998", "P-Kreatinin", "µmol/L", "45-90")]
TEXTS = ["Remiss för bedömning av ländryggssmärta, önskar återbesök inom två veckor.",
         "Patienten har förhöjt blodtryck; vänligen utred njurfunktion.",
         "Överrapportering till hemsjukvården: såromläggning måndag och torsdag.",
         "Graviditetsvecka 32, önskar tillväxtultraljud.", "Åtgärd: ändrad läkemedelslista, se bifogat."]
KIND_TYPES = {"remiss": ["REF^I12"], "lab_order": ["OML^O21", "ORM^O01"], "lab_result": ["ORU^R01"],
              "info": ["MDM^T02"]}
KINDS = ("remiss", "lab_order", "lab_result", "info")


@dataclass(frozen=True)
class GenMessage:
    data: bytes
    kind: str
    msh10: str
    patient: str  # the test personnummer (for assertions in tests; never logged)
    sender: str
    receiver: str


def _hd(hsa: str, variant: int) -> str:
    return f"^{hsa}^HSA" if variant else hsa


def _ts(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, STOCKHOLM).strftime("%Y%m%d%H%M%S%z")


def _pid(pnr: str, rng: random.Random) -> str:
    samordning = int(pnr[6:8]) > 60
    oid = OID_SAMORDNINGSNUMMER if samordning else OID_PERSONNUMMER
    name = rng.choice(["Testsson^Åsa", "Provare^Örjan", "Exempel^Märta", "Fiktiv^Björn", "Testperson^Lärka"])
    dob = pnr[:8] if not samordning else pnr[:6] + f"{int(pnr[6:8]) - 60:02d}"
    return f"PID|1||{pnr}^^^&{oid}&ISO^NNSWE||{name}||{dob}|{rng.choice('MF')}"


def message(kind: str, mtype: str, msh10: str, sender: Unit, receiver: Unit, pnr: str, ms: int,
            rng: random.Random, *, placer: str | None = None, charset: str = "utf-8") -> bytes:
    ts = _ts(ms)
    variant = rng.randrange(2)
    app = SENDING_APP.get(sender.unit_type, "LEGACY")
    structure = {"REF^I12": "REF_I12", "OML^O21": "OML_O21", "ORM^O01": "ORM_O01", "ORU^R01": "ORU_R01",
                 "MDM^T02": "MDM_T02"}[mtype]
    msh = (f"MSH|^~\\&|{app}|{_hd(sender.hsa_id, variant)}|SAMEX|{_hd(receiver.hsa_id, variant)}|{ts}||"
           f"{mtype}^{structure}|{msh10}|P|2.5.1|||AL|NE|SWE|{MSH18_OF[charset]}")
    segs = [msh, _pid(pnr, rng)]
    text = escape(rng.choice(TEXTS))
    if kind == "remiss":
        ref = f"RF{msh10}"
        segs += [f"RF1|P^Skickad|R^Rutin|GRP^Remiss|AMB|R^Remiss|{ref}|{ts}",
                 f"PRD|RP|Läkare^Anna|||||{sender.hsa_id}^^HSA",
                 f"PRD|RT|{escape(receiver.name)}|||||{receiver.hsa_id}^^HSA",
                 f"OBX|1|TX|REMTEXT^Frågeställning||{text}||||||F"]
    elif kind == "lab_order":
        code, name, _, _ = rng.choice(TESTS)
        placer = placer or f"PO{msh10}"
        segs += [f"ORC|NW|{placer}^{app}||||||||||||||||{sender.hsa_id}^^HSA",
                 f"OBR|1|{placer}^{app}||{code}^{name}^NPU|||{ts}"]
        if mtype == "OML^O21":
            segs.insert(2, "PV1|1|O")
    elif kind == "lab_result":
        code, name, unit, ref = rng.choice(TESTS)
        placer = placer or f"PO{msh10}"
        status = rng.choice("PFFFC")
        value = f"{rng.uniform(1, 150):.1f}"
        segs += [f"ORC|RE|{placer}|FL{msh10}",
                 f"OBR|1|{placer}|FL{msh10}|{code}^{name}^NPU|||{ts}|||||||||||||||{ts}||CH|{status}",
                 f"OBX|1|NM|{code}^{name}^NPU||{value}|{escape(unit)}|{escape(ref)}|N|||{status}|||{ts}"]
    else:
        segs += [f"EVN|T02|{ts}", "PV1|1|O",
                 f"TXA|1|EPI^Epikris|TX|{ts}||||||||DOC{msh10}||||||AU",
                 f"OBX|1|TX|EPIKRIS^Epikris||{text}||||||F"]
    return ("\r".join(segs) + "\r").encode(charset)


def traffic(rng: random.Random, units: list[Unit], *, patients: int = 500, start_ms: int | None = None,
            prefix: str = "G", latin1_share: float = 0.25) -> Iterator[GenMessage]:
    """Endless mixed HL7 traffic: referrals, lab orders (OML/ORM), results answering them, MDM notes."""
    import time

    by_type: dict[str, list[Unit]] = {}
    for u in units:
        by_type.setdefault(u.unit_type, []).append(u)
    pool = [test_personnummer(rng, samordning=(i % 20 == 0)) for i in range(patients)]
    senders = [u for u in units if u.unit_type not in ("lab", "lokalt_lab", "extern_diagnostik")]
    open_orders: dict[str, tuple[str, Unit, Unit]] = {}  # patient -> (placer, orderer, lab)
    ms = start_ms if start_ms is not None else int(time.time() * 1000)
    n = 0
    while True:
        n += 1
        ms += rng.randrange(1, 50)
        kind = rng.choice(KINDS)
        mtype = rng.choice(KIND_TYPES[kind])
        pnr = rng.choice(pool)
        msh10 = f"{prefix}{n:08d}"
        charset = "latin-1" if rng.random() < latin1_share else "utf-8"
        placer = None
        if kind == "lab_result" and pnr in open_orders:
            placer, receiver, sender = open_orders.pop(pnr)
        else:
            rtypes = [t for t in RECEIVER_TYPES[kind] if t in by_type]
            receiver = rng.choice(by_type[rng.choice(rtypes)])
            sender = rng.choice(by_type["lab"] if kind == "lab_result" and "lab" in by_type else senders)
        data = message(kind, mtype, msh10, sender, receiver, pnr, ms, rng, placer=placer, charset=charset)
        if kind == "lab_order" and receiver.unit_type == "lab":
            open_orders[pnr] = (f"PO{msh10}", sender, receiver)
        yield GenMessage(data, kind, msh10, pnr, sender.hsa_id, receiver.hsa_id)
