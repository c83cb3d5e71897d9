"""A simulated Millennium FHIR R4 server for tests and ``samex run``.

Stores what it is sent (in memory), honours conditional create (``If-None-Exist``: 200 with the
existing resource instead of a duplicate), records every request, and can be told to be slow or
to answer a given status (503, 4xx) for a number of requests or seconds — in process
(:meth:`SimFhir.set_fault`) or over HTTP (``POST /_sim/fault``). ``GET /_sim/received`` lists the
requests, ``GET /_sim/stats`` counts them.
"""

from __future__ import annotations

import asyncio
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

FHIR_JSON = "application/fhir+json"


@dataclass
class Received:
    method: str
    path: str
    if_none_exist: str | None
    status: int
    resource_type: str | None
    identifiers: list[str]
    at: float


@dataclass
class Fault:
    status: int = 0  # 0 = answer normally
    remaining: int | None = None  # requests left to fail (None = until `until`)
    until: float | None = None  # monotonic deadline (None = until `remaining` runs out)
    delay_s: float = 0.0
    detail: str = "simulated failure"

    def active(self) -> bool:
        if not self.status:
            return False
        if self.remaining is not None and self.remaining <= 0:
            return False
        return self.until is None or time.monotonic() < self.until


@dataclass
class SimFhir:
    name: str = "millennium"
    store: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # type -> id -> resource
    received: list[Received] = field(default_factory=list)
    fault: Fault = field(default_factory=Fault)

    def set_fault(self, status: int = 0, count: int | None = None, seconds: float | None = None,
                  delay_s: float = 0.0, detail: str = "simulated failure") -> None:
        self.fault = Fault(status, count, time.monotonic() + seconds if seconds is not None else None, delay_s, detail)

    def resources(self, rtype: str) -> list[dict[str, Any]]:
        return list(self.store.get(rtype, {}).values())

    def find_all(self, rtype: str, system: str, value: str) -> list[dict[str, Any]]:
        return [res for res in self.store.get(rtype, {}).values()
                if any(i.get("system") == system and i.get("value") == value for i in res.get("identifier") or [])]

    def find(self, rtype: str, system: str, value: str) -> dict[str, Any] | None:
        hits = self.find_all(rtype, system, value)
        return hits[0] if hits else None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_get("/_sim/received", self._received)
        app.router.add_get("/_sim/stats", self._stats)
        app.router.add_post("/_sim/fault", self._set_fault)
        app.router.add_get("/metadata", self._metadata)
        app.router.add_post("/{rtype}", self._create)
        app.router.add_get("/{rtype}/{id}", self._read)
        app.router.add_get("/{rtype}", self._search)
        return app

    # -- handlers --------------------------------------------------------------------------------
    async def _create(self, request: web.Request) -> web.Response:
        rtype = request.match_info["rtype"]
        cond = request.headers.get("If-None-Exist")
        body = await request.read()
        if self.fault.delay_s:
            await asyncio.sleep(self.fault.delay_s)
        try:
            res = orjson.loads(body)
        except orjson.JSONDecodeError:
            res = None
        idents = [f"{i.get('system')}|{i.get('value')}" for i in (res or {}).get("identifier") or []
                  if isinstance(i, dict)] if isinstance(res, dict) else []

        def answer(status: int, doc: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
            self.received.append(Received("POST", request.path, cond, status, rtype, idents, time.time()))
            return web.Response(body=orjson.dumps(doc), status=status, content_type=FHIR_JSON, headers=headers)

        if self.fault.active():
            if self.fault.remaining is not None:
                self.fault.remaining -= 1
            return answer(self.fault.status, _outcome("transient" if self.fault.status >= 500 else "processing",
                                                      self.fault.detail))
        if not isinstance(res, dict) or res.get("resourceType") != rtype:
            return answer(400, _outcome("structure", f"body is not a {rtype} resource"))
        if cond:
            params = urllib.parse.parse_qs(cond)
            for token in params.get("identifier", []):
                system, _, value = token.partition("|")
                hits = self.find_all(rtype, system, value)
                if len(hits) > 1:  # FHIR: several matches -> 412 Precondition Failed
                    return answer(412, _outcome("duplicate", "If-None-Exist matches several resources"))
                if hits:
                    return answer(200, hits[0], {"Location": f"/{rtype}/{hits[0]['id']}/_history/1"})
        rid = uuid.uuid4().hex
        res = {**res, "id": rid, "meta": {"versionId": "1", "lastUpdated": _now()}}
        self.store.setdefault(rtype, {})[rid] = res
        return answer(201, res, {"Location": f"/{rtype}/{rid}/_history/1", "ETag": 'W/"1"'})

    async def _read(self, request: web.Request) -> web.Response:
        res = self.store.get(request.match_info["rtype"], {}).get(request.match_info["id"])
        if res is None:
            return _fhir(_outcome("not-found", "no such resource"), 404)
        return _fhir(res, 200)

    async def _search(self, request: web.Request) -> web.Response:
        rtype = request.match_info["rtype"]
        token = request.query.get("identifier")
        if token:
            system, _, value = token.partition("|")
            found = self.find(rtype, system, value)
            hits = [found] if found else []
        else:
            hits = self.resources(rtype)
        return _fhir({"resourceType": "Bundle", "type": "searchset", "total": len(hits),
                      "entry": [{"resource": r} for r in hits]}, 200)

    async def _received(self, request: web.Request) -> web.Response:
        return web.json_response([r.__dict__ for r in self.received])

    async def _stats(self, request: web.Request) -> web.Response:
        by_status: dict[str, int] = {}
        for r in self.received:
            by_status[str(r.status)] = by_status.get(str(r.status), 0) + 1
        return web.json_response({"requests": len(self.received), "by_status": by_status,
                                  "stored": {t: len(v) for t, v in self.store.items()}})

    async def _set_fault(self, request: web.Request) -> web.Response:
        q = await request.json()
        self.set_fault(int(q.get("status", 0)), q.get("count"), q.get("seconds"), float(q.get("delay_s", 0.0)),
                       str(q.get("detail", "simulated failure")))
        return web.json_response({"ok": True})

    async def _metadata(self, request: web.Request) -> web.Response:
        return _fhir({"resourceType": "CapabilityStatement", "status": "active", "kind": "instance",
                      "fhirVersion": "4.0.1", "format": ["json"], "date": _now()[:10],
                      "software": {"name": f"samex simulator ({self.name})"}}, 200)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _outcome(code: str, text: str) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": code, "diagnostics": text}]}


def _fhir(doc: dict[str, Any], status: int) -> web.Response:
    return web.Response(body=orjson.dumps(doc), status=status, content_type=FHIR_JSON)


async def start(sim: SimFhir, host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, int]:
    """Start the simulator in the running loop; returns the runner (``await runner.cleanup()``) and port."""
    runner = web.AppRunner(sim.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server = site._server
    sockets = getattr(server, "sockets", None) or []
    return runner, int(sockets[0].getsockname()[1]) if sockets else port


# -- a simulated FHIR sender (Millennium units sending orders and referrals to fhir-in) ------------
HSA_SYSTEM = "urn:oid:1.2.752.129.2.1.4.1"
PNR_SYSTEMS = {"personnummer": "urn:oid:1.2.752.129.2.1.3.1", "samordningsnummer": "urn:oid:1.2.752.129.2.1.3.3"}
LAB_TYPES = ("lab", "lokalt_lab", "extern_diagnostik")
REFERRAL_TYPES = ("sjukhus", "forlossning", "primarvard", "mvc", "privat")


def _org(hsa: str) -> dict[str, Any]:
    return {"type": "Organization", "identifier": {"system": HSA_SYSTEM, "value": hsa}}


def synthetic_resources(rng: Any, units: list[Any], patients: list[str]) -> Any:
    """Endless ServiceRequests (lab orders, referrals) and Tasks (answers to earlier referrals)
    between the example units, as FHIR R4 JSON dicts. ``rng`` is a ``random.Random``."""
    by_type: dict[str, list[Any]] = {}
    for u in units:
        by_type.setdefault(u.unit_type, []).append(u)
    senders = [u for u in units if u.unit_type not in (*LAB_TYPES, "kommun")]
    # FHIR traffic is Millennium's own: lab orders to the region's labs (on Millennium once live).
    # Local labs (LabCenter) and external diagnostics (Sectra IDS7) take HL7 v2 only, and samex does
    # not translate FHIR to HL7 v2, so the simulated FHIR sender does not order from them.
    labs = by_type.get("lab", []) or [u for t in LAB_TYPES for u in by_type.get(t, [])]
    receivers = [u for t in REFERRAL_TYPES for u in by_type.get(t, [])]
    open_referrals: list[tuple[str, str, str, str]] = []  # referral id, patient, requester, owner
    n = 0
    while True:
        n += 1
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        roll = rng.random()
        if roll < 0.25 and open_referrals:
            rid, pnr, requester, owner = open_referrals.pop(rng.randrange(len(open_referrals)))
            yield {"resourceType": "Task", "id": f"task-{rid}-{n}", "status": rng.choice(
                       ["received", "accepted", "rejected", "completed"]), "intent": "order",
                   "focus": {"reference": f"ServiceRequest/{rid}"},
                   "for": {"identifier": {"system": _pnr_system(pnr), "value": pnr}},
                   "requester": _org(requester), "owner": _org(owner), "lastModified": now}
            continue
        sender = rng.choice(senders)
        pnr = rng.choice(patients)
        lab = roll < 0.6 or not receivers
        receiver = rng.choice(labs if lab else [u for u in receivers if u.hsa_id != sender.hsa_id] or receivers)
        rid = f"{'LO' if lab else 'RF'}{rng.randrange(10**9):09d}"
        if not lab:
            open_referrals.append((rid, pnr, sender.hsa_id, receiver.hsa_id))
            del open_referrals[:-500]
        yield {"resourceType": "ServiceRequest", "id": rid,
               "identifier": [{"system": "urn:oid:1.2.752.129.2.1.2.1", "value": rid}],
               "status": "active", "intent": "order",
               "category": [{"coding": [{"system": "http://snomed.info/sct",
                                         "code": "108252007" if lab else "3457005"}]}],
               "code": {"text": "B-Hb" if lab else "Remiss"},
               "subject": {"identifier": {"system": _pnr_system(pnr), "value": pnr}},
               "requester": _org(sender.hsa_id), "performer": [_org(receiver.hsa_id)], "authoredOn": now}


def _pnr_system(pnr: str) -> str:
    return PNR_SYSTEMS["samordningsnummer" if int(pnr[6:8]) > 60 else "personnummer"]


async def send_resources(base_url: str, resources: Any, count: int | None, rate: float,
                         stop: asyncio.Event | None = None) -> dict[int, int]:
    """POST resources to a FHIR endpoint (fhir-in) at ``rate`` per second, retrying 503 answers;
    returns the count of final answers by status."""
    import aiohttp

    stop = stop or asyncio.Event()
    answers: dict[int, int] = {}
    sent = 0
    t0 = time.monotonic()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        for res in resources:
            if stop.is_set() or (count is not None and sent >= count):
                break
            body = orjson.dumps(res)
            for attempt in range(10):
                try:
                    async with http.post(f"{base_url.rstrip('/')}/{res['resourceType']}", data=body,
                                         headers={"Content-Type": FHIR_JSON}) as r:
                        status = r.status
                except (aiohttp.ClientError, TimeoutError):
                    status = 0
                if status not in (0, 503):
                    break
                await asyncio.sleep(min(5.0, 0.2 * 2**attempt))
            answers[status] = answers.get(status, 0) + 1
            sent += 1
            ahead = sent / rate - (time.monotonic() - t0)
            if ahead > 0:
                await asyncio.sleep(ahead)
    return answers
