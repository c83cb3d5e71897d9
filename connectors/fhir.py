"""FHIR R4 JSON -> samex envelopes: validation, mapping, OperationOutcome. Pure functions, no I/O.

Validation is structural, with the ``fhir.resources`` 8.x R4B models (R4B shares the R4 shape of
ServiceRequest, Task and Bundle), plus the few code bindings samex relies on (status, intent,
Bundle.type), which the models do not check. Mapping rules are in docs/fhir-mapping.md.

Every text that leaves this module (problems, exceptions) passes through ``redact``: a pydantic
error can echo the input, and the input may carry a personnummer.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import ValidationError

from router.envelope import Correlation, Envelope, Kind, Party, Payload
from router.errors import IdentifierError, MappingError
from router.identifiers import OID_HSA, OID_HSA_FHIR, OID_PERSONNUMMER, OID_SAMORDNINGSNUMMER, PatientId, redact

FHIR_JSON = "application/fhir+json"
#: Namespace of samex's UUIDv5 message ids for FHIR input (fixed forever: ids must stay stable).
MESSAGE_ID_NAMESPACE = uuid.UUID("5f1e3c2a-8d4b-5a7e-9c61-0b2f4d6e8a10")
#: Identifier system fhir-out adds to every resource it delivers (conditional create key).
MESSAGE_ID_SYSTEM = "urn:samex:message-id"

PATIENT_SYSTEMS = {
    f"urn:oid:{OID_PERSONNUMMER}": "personnummer",
    f"urn:oid:{OID_SAMORDNINGSNUMMER}": "samordningsnummer",
}
HSA_SYSTEMS = {f"urn:oid:{OID_HSA}", f"urn:oid:{OID_HSA_FHIR}"}

#: ServiceRequest.category codes -> envelope kind (SNOMED CT and plain codes).
CATEGORY_KIND: dict[str, Kind] = {
    "108252007": "lab_order",  # SNOMED CT: Laboratory procedure
    "laboratory": "lab_order",
    "lab": "lab_order",
    "3457005": "remiss",  # SNOMED CT: Patient referral
    "referral": "remiss",
    "remiss": "remiss",
}
#: Task.status -> referral status word (only these Task states are routed).
TASK_STATUS: dict[str, str] = {
    "draft": "skickad",
    "requested": "skickad",
    "received": "mottagen",
    "accepted": "accepterad",
    "ready": "accepterad",
    "in-progress": "accepterad",
    "rejected": "avvisad",
    "cancelled": "avvisad",
    "completed": "besvarad",
}
SR_STATUS = {"draft", "active", "on-hold", "revoked", "completed", "entered-in-error", "unknown"}
SR_INTENT = {"proposal", "plan", "directive", "order", "original-order", "reflex-order", "filler-order",
             "instance-order", "option"}
TASK_STATUS_ALL = set(TASK_STATUS) | {"on-hold", "failed", "entered-in-error"}
TASK_INTENT = {"unknown", "proposal", "plan", "order", "original-order", "reflex-order", "filler-order",
               "instance-order", "option"}
BUNDLE_TYPES_ACCEPTED = ("transaction", "batch", "collection")
ROUTED_TYPES = ("ServiceRequest", "Task")


@dataclass(frozen=True)
class Problem:
    """One OperationOutcome issue. ``diagnostics`` never contains a patient identifier."""

    code: str  # FHIR issue-type: structure, required, value, invalid, not-supported, processing, transient
    diagnostics: str
    expression: str | None = None
    severity: str = "error"


class FhirInputError(MappingError):
    """FHIR input that samex refuses; ``status`` is the HTTP answer (400, 415, 422)."""

    def __init__(self, problems: Iterable[Problem], status: int = 422) -> None:
        self.problems = [Problem(p.code, redact(p.diagnostics), p.expression, p.severity) for p in problems]
        self.status = status
        super().__init__("; ".join(p.diagnostics for p in self.problems[:3]))


def operation_outcome(problems: Iterable[Problem]) -> dict[str, Any]:
    issues = []
    for p in problems:
        issue: dict[str, Any] = {"severity": p.severity, "code": p.code, "diagnostics": redact(p.diagnostics)}
        if p.expression:
            issue["expression"] = [p.expression]
        issues.append(issue)
    return {"resourceType": "OperationOutcome", "issue": issues}


def _bad(code: str, text: str, expression: str | None = None, status: int = 422) -> FhirInputError:
    return FhirInputError([Problem(code, text, expression)], status)


# -- parsing and validation -------------------------------------------------------------------------
def parse_json(body: bytes) -> dict[str, Any]:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise _bad("structure", f"body is not JSON: {exc.args[0] if exc.args else 'syntax error'}",
                   status=400) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("resourceType"), str):
        raise _bad("structure", "body is not a FHIR resource (a JSON object with resourceType)", status=400)
    return doc


def _model(resource_type: str) -> Any:
    if resource_type == "ServiceRequest":
        from fhir.resources.R4B.servicerequest import ServiceRequest

        return ServiceRequest
    if resource_type == "Task":
        from fhir.resources.R4B.task import Task

        return Task
    if resource_type == "Bundle":
        from fhir.resources.R4B.bundle import Bundle

        return Bundle
    raise _bad("not-supported", f"resource type {resource_type!r} is not accepted here", "resourceType", 400)


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def validate(resource: dict[str, Any]) -> None:
    """Structural validation against the FHIR model plus the code bindings samex routes on.

    Raises :class:`FhirInputError` (400) listing up to 10 problems; texts never echo input values.
    """
    rtype = resource.get("resourceType")
    model = _model(str(rtype))
    problems: list[Problem] = []
    try:
        model.model_validate(resource)
    except ValidationError as exc:
        for err in exc.errors(include_input=False, include_url=False)[:10]:
            where = f"{rtype}.{_loc(tuple(err['loc']))}" if err["loc"] else str(rtype)
            problems.append(Problem("structure", f"{where}: {err['msg']}", where))
    except KeyError as exc:  # fhir_core looks up a contained/entry resourceType that does not exist
        problems.append(Problem("structure", f"{rtype}: a nested resource has an unknown resourceType "
                                f"({str(exc)[:80]})"))
    except Exception as exc:  # fhir.resources raises plain errors for some shapes
        problems.append(Problem("structure", f"{rtype}: {type(exc).__name__}: {str(exc)[:200]}"))
    problems.extend(_bindings(resource))
    if problems:
        raise FhirInputError(problems, 400)


def _bindings(res: dict[str, Any], where: str | None = None) -> list[Problem]:
    rtype = res.get("resourceType")
    where = where or str(rtype)
    out: list[Problem] = []

    def check(name: str, allowed: set[str] | tuple[str, ...]) -> None:
        v = res.get(name)
        if isinstance(v, str) and v not in allowed:
            out.append(Problem("code-invalid", f"{where}.{name}: not a code of its required value set",
                               f"{where}.{name}"))

    if rtype == "ServiceRequest":
        check("status", SR_STATUS)
        check("intent", SR_INTENT)
    elif rtype == "Task":
        check("status", TASK_STATUS_ALL)
        check("intent", TASK_INTENT)
    elif rtype == "Bundle":
        check("type", ("document", "message", "transaction", "transaction-response", "batch", "batch-response",
                       "history", "searchset", "collection"))
        for i, e in enumerate(res.get("entry") or []):
            r = e.get("resource") if isinstance(e, dict) else None
            if isinstance(r, dict):
                out.extend(_bindings(r, f"Bundle.entry[{i}].resource"))
    return out


# -- references -------------------------------------------------------------------------------------
@dataclass
class Context:
    """Resources a reference may point to: the resource's contained ones and the Bundle's entries."""

    contained: dict[str, dict[str, Any]] = field(default_factory=dict)
    bundle: dict[str, dict[str, Any]] = field(default_factory=dict)

    def resolve(self, ref: dict[str, Any]) -> dict[str, Any] | None:
        r = ref.get("reference")
        if not isinstance(r, str):
            return None
        if r.startswith("#"):
            return self.contained.get(r[1:])
        if r in self.bundle:
            return self.bundle[r]
        # relative "Type/id" may also match an absolute fullUrl ending in it
        for url, res in self.bundle.items():
            if url.endswith("/" + r):
                return res
        return None


def _identifiers(ref: dict[str, Any], ctx: Context) -> list[dict[str, Any]]:
    """Identifiers of a Reference: its logical identifier, then those of the resource it points to."""
    ids: list[dict[str, Any]] = []
    if isinstance(ref.get("identifier"), dict):
        ids.append(ref["identifier"])
    target = ctx.resolve(ref)
    if target is not None:
        ids.extend(i for i in target.get("identifier") or [] if isinstance(i, dict))
        if target.get("resourceType") == "PractitionerRole" and isinstance(target.get("organization"), dict):
            # The unit is the role's organization; it comes first.
            ids[:0] = _identifiers(target["organization"], ctx)
    return ids


def _patient(res: dict[str, Any], field_name: str, ctx: Context) -> PatientId:
    ref = res.get(field_name)
    where = f"{res['resourceType']}.{field_name}"
    if not isinstance(ref, dict):
        raise _bad("required", f"{where} is missing: samex needs the patient", where)
    for ident in _identifiers(ref, ctx):
        kind = PATIENT_SYSTEMS.get(str(ident.get("system")))
        if kind and isinstance(ident.get("value"), str):
            try:
                return PatientId(value=ident["value"], type=kind)  # type: ignore[arg-type]
            except (IdentifierError, ValidationError) as exc:
                text = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
                raise _bad("value", f"{where}: {text}", where) from None
    raise _bad("required", f"{where} has no identifier with system urn:oid:{OID_PERSONNUMMER} (personnummer) or "
               f"urn:oid:{OID_SAMORDNINGSNUMMER} (samordningsnummer)", where)


def _party(res: dict[str, Any], field_name: str, ctx: Context, system: str | None) -> Party:
    ref = res.get(field_name)
    where = f"{res['resourceType']}.{field_name}"
    if isinstance(ref, list):
        ref = ref[0] if ref else None
        where += "[0]"
    if not isinstance(ref, dict):
        raise _bad("required", f"{where} is missing: samex needs the unit's HSA-id", where)
    for ident in _identifiers(ref, ctx):
        if ident.get("system") in HSA_SYSTEMS and isinstance(ident.get("value"), str):
            try:
                return Party(unit_hsa_id=ident["value"], system=system)
            except ValidationError as exc:
                raise _bad("value", f"{where}: {exc.errors()[0]['msg']}", where) from None
    raise _bad("required", f"{where} has no identifier with an HSA-id system (urn:oid:{OID_HSA})", where)


def _time_ms(value: Any) -> int | None:
    if not isinstance(value, str):
        return None
    try:
        t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return int(t.timestamp() * 1000)


def _first_identifier(res: dict[str, Any]) -> dict[str, Any] | None:
    for ident in res.get("identifier") or []:
        if isinstance(ident, dict) and isinstance(ident.get("value"), str) and ident.get("system") != MESSAGE_ID_SYSTEM:
            return ident
    return None


def _placer(res: dict[str, Any]) -> str | None:
    for ident in res.get("identifier") or []:
        codings = ((ident.get("type") or {}).get("coding") or []) if isinstance(ident, dict) else []
        if any(c.get("code") == "PLAC" for c in codings if isinstance(c, dict)):
            return str(ident.get("value"))
    first = _first_identifier(res)
    return str(first["value"]) if first else None


def identity(res: dict[str, Any]) -> str:
    """The business identity of a resource: its first identifier (system|value), else its id."""
    ident = _first_identifier(res)
    if ident is not None:
        return f"{ident.get('system', '')}|{ident['value']}"
    if isinstance(res.get("id"), str):
        return f"id|{res['id']}"
    raise _bad("required", f"{res.get('resourceType')} needs an identifier or an id, so that a resend keeps its "
               "message id", f"{res.get('resourceType')}.identifier")


def message_id(source_system: str, res: dict[str, Any]) -> str:
    """UUIDv5 over source system, resource type, identity and state: a resend maps to the same id,
    a status change (a new fact) to a new one."""
    state = [str(res.get("status", "")), str(((res.get("businessStatus") or {}).get("text")) or "")]
    name = "|".join([source_system, str(res.get("resourceType")), identity(res), *state])
    return str(uuid.uuid5(MESSAGE_ID_NAMESPACE, name))


def _ref_id(ref: Any) -> str | None:
    if not isinstance(ref, dict):
        return None
    if isinstance(ref.get("identifier"), dict) and isinstance(ref["identifier"].get("value"), str):
        return str(ref["identifier"]["value"])
    r = ref.get("reference")
    return r.rsplit("/", 1)[-1] if isinstance(r, str) and r else None


# -- mapping ----------------------------------------------------------------------------------------
def map_resource(res: dict[str, Any], raw: bytes, source_system: str, ctx: Context | None = None,
                 received_ms: int | None = None, trace_id: str | None = None) -> Envelope:
    """Map one validated ServiceRequest or Task to an envelope; payload = ``raw`` (its JSON bytes)."""
    ctx = ctx or Context()
    ctx.contained = {c["id"]: c for c in res.get("contained") or [] if isinstance(c, dict) and "id" in c}
    rtype = res.get("resourceType")
    if rtype == "ServiceRequest":
        kind = _sr_kind(res)
        patient = _patient(res, "subject", ctx)
        sender = _party(res, "requester", ctx, source_system)
        receiver = _party(res, "performer", ctx, None)
        own = _first_identifier(res)
        own_id = str(own["value"]) if own else res.get("id")
        corr = (Correlation(placer_order_number=_placer(res)) if kind == "lab_order"
                else Correlation(referral_id=own_id))
        status = "skickad" if kind == "remiss" and res.get("status") == "active" else None
        event = _time_ms(res.get("authoredOn"))
    elif rtype == "Task":
        kind = "remiss"
        status = TASK_STATUS.get(str(res.get("status")))
        if status is None:
            raise _bad("not-supported", "Task.status: only referral states (requested, received, accepted, "
                       "rejected, completed, ...) are routed", "Task.status")
        patient = _patient(res, "for", ctx)
        forward = res.get("status") in ("draft", "requested")
        sender = _party(res, "requester" if forward else "owner", ctx, source_system)
        receiver = _party(res, "owner" if forward else "requester", ctx, None)
        focus = res.get("focus")
        if not isinstance(focus, dict) or not _ref_id(focus):
            raise _bad("required", "Task.focus must reference the referral (ServiceRequest)", "Task.focus")
        corr = Correlation(referral_id=_ref_id(focus), in_reply_to=str(focus.get("reference") or _ref_id(focus)))
        event = _time_ms(res.get("lastModified")) or _time_ms(res.get("authoredOn"))
    else:
        raise _bad("not-supported", f"{rtype} is not routed (only ServiceRequest and Task)", "resourceType")
    try:
        return Envelope(
            message_id=message_id(source_system, res),
            source_message_id=res.get("id") or identity(res),
            kind=kind,
            subtype=str(rtype),
            status=status,
            patient=patient,
            sender=sender,
            receiver=receiver,
            correlation=corr,
            event_time_ms=event,
            source=f"fhir-in:{source_system}",
            trace_id=trace_id,
            payload=Payload.of(raw, "fhir_r4_json", FHIR_JSON),
            **({"received_time_ms": received_ms} if received_ms is not None else {}),
        )
    except ValidationError as exc:
        raise _bad("invalid", f"{rtype}: {exc.errors()[0]['msg']}") from None


def _sr_kind(res: dict[str, Any]) -> Kind:
    for cat in res.get("category") or []:
        for c in (cat.get("coding") or []) if isinstance(cat, dict) else []:
            kind = CATEGORY_KIND.get(str(c.get("code", "")).lower()) if isinstance(c, dict) else None
            if kind:
                return kind
    raise _bad("not-supported", "ServiceRequest.category must be laboratory (SNOMED 108252007) or referral "
               "(SNOMED 3457005)", "ServiceRequest.category")


@dataclass(frozen=True)
class EntryResult:
    """One Bundle entry: an envelope, or the problems that kept it out; ``index`` into Bundle.entry."""

    index: int
    resource_type: str
    envelope: Envelope | None = None
    error: FhirInputError | None = None


def _standalone(res: dict[str, Any], ctx: Context) -> dict[str, Any]:
    """A copy whose references to other Bundle entries become logical (identifier) references."""

    def walk(v: Any) -> Any:
        if isinstance(v, dict):
            ref = v.get("reference")
            if isinstance(ref, str) and not ref.startswith("#"):
                target = ctx.resolve(v)
                if target is not None:
                    ids = _identifiers(v, ctx)  # a PractitionerRole's organization comes first
                    known = [i for i in ids if i.get("system") in PATIENT_SYSTEMS or i.get("system") in HSA_SYSTEMS]
                    ident = known[0] if known else (ids[0] if ids else None)
                    is_org = target.get("resourceType") == "PractitionerRole" and bool(known) and known[0] is ids[0]
                    out: dict[str, Any] = {"type": "Organization" if is_org else str(target.get("resourceType"))}
                    if ident is not None and isinstance(ident.get("value"), str):
                        out["identifier"] = {"system": ident.get("system"), "value": ident["value"]}
                        if "display" in v:
                            out["display"] = v["display"]
                        return out
            return {k: walk(x) for k, x in v.items()}
        if isinstance(v, list):
            return [walk(x) for x in v]
        return v

    return walk(res)  # type: ignore[no-any-return]


def map_bundle(bundle: dict[str, Any], source_system: str, received_ms: int | None = None,
               trace_id: str | None = None) -> list[EntryResult]:
    """Each ServiceRequest/Task entry becomes one envelope. Other entries (Patient, Organization,
    PractitionerRole, ...) only resolve references. Entry payloads are standalone copies."""
    btype = bundle.get("type")
    if btype not in BUNDLE_TYPES_ACCEPTED:
        raise _bad("not-supported", f"Bundle.type must be one of {', '.join(BUNDLE_TYPES_ACCEPTED)}", "Bundle.type")
    entries = [e for e in bundle.get("entry") or [] if isinstance(e, dict)]
    ctx = Context()
    for e in entries:
        res = e.get("resource")
        if not isinstance(res, dict):
            continue
        if isinstance(e.get("fullUrl"), str):
            ctx.bundle[e["fullUrl"]] = res
        if isinstance(res.get("id"), str):
            ctx.bundle[f"{res.get('resourceType')}/{res['id']}"] = res
    out: list[EntryResult] = []
    for i, e in enumerate(entries):
        res = e.get("resource")
        if not isinstance(res, dict):
            out.append(EntryResult(i, "", error=_bad("required", f"Bundle.entry[{i}].resource is missing",
                                                     f"Bundle.entry[{i}]")))
            continue
        rtype = str(res.get("resourceType"))
        if rtype not in ROUTED_TYPES:
            continue
        method = (e.get("request") or {}).get("method")
        if btype in ("transaction", "batch") and method not in ("POST", "PUT"):
            out.append(EntryResult(i, rtype, error=_bad("not-supported", f"Bundle.entry[{i}].request.method must "
                                                        "be POST or PUT", f"Bundle.entry[{i}].request.method")))
            continue
        try:
            own = _standalone(res, ctx)
            env = map_resource(own, orjson.dumps(own), source_system, Context(bundle=ctx.bundle),
                               received_ms, trace_id)
        except FhirInputError as exc:
            exc.problems = [Problem(p.code, f"Bundle.entry[{i}]: {p.diagnostics}", p.expression) for p in exc.problems]
            out.append(EntryResult(i, rtype, error=exc))
            continue
        out.append(EntryResult(i, rtype, envelope=env))
    if not out:
        raise _bad("required", "Bundle has no ServiceRequest or Task entry to route", "Bundle.entry")
    return out
