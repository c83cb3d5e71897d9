"""FHIR R4 mapping and validation (pure: no broker, no sockets)."""

from __future__ import annotations

import copy
import datetime as dt
import random
from collections import Counter
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.fhir import (
    FhirInputError,
    map_bundle,
    map_resource,
    message_id,
    operation_outcome,
    parse_json,
    validate,
)
from connectors.fhir_out import Attempt, Backoff, prepare
from router.identifiers import OID_HSA, OID_PERSONNUMMER, OID_SAMORDNINGSNUMMER
from router.synth import test_personnummer

SENDER = "SE2321000131-E000000001007"
RECEIVER = "SE2321000131-E000000001014"
HSA = f"urn:oid:{OID_HSA}"
PNR = f"urn:oid:{OID_PERSONNUMMER}"


def hsa_ref(hsa: str) -> dict[str, Any]:
    return {"type": "Organization", "identifier": {"system": HSA, "value": hsa}}


def service_request(pnr: str, category: str = "108252007", rid: str = "sr-1", **extra: Any) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "id": rid,
        "identifier": [{"system": "urn:oid:1.2.752.129.2.1.2.1", "value": f"PO-{rid}",
                        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                             "code": "PLAC"}]}}],
        "status": "active",
        "intent": "order",
        "category": [{"coding": [{"system": "http://snomed.info/sct", "code": category}]}],
        "code": {"text": "B-Hb"},
        "subject": {"identifier": {"system": PNR, "value": pnr}},
        "requester": hsa_ref(SENDER),
        "performer": [hsa_ref(RECEIVER)],
        "authoredOn": "2026-11-23T09:00:00+01:00",
    }
    res.update(extra)
    return res


def task(pnr: str, status: str = "accepted", tid: str = "task-1") -> dict[str, Any]:
    return {
        "resourceType": "Task",
        "id": tid,
        "status": status,
        "intent": "order",
        "focus": {"reference": "ServiceRequest/RF-77", "identifier": {"system": "urn:x", "value": "RF-77"}},
        "for": {"identifier": {"system": PNR, "value": pnr}},
        "requester": hsa_ref(SENDER),
        "owner": hsa_ref(RECEIVER),
        "lastModified": "2026-11-23T10:00:00Z",
    }


@pytest.fixture
def pnr() -> str:
    return test_personnummer(random.Random(5))


def raw(res: dict[str, Any]) -> bytes:
    return orjson.dumps(res)


def test_lab_order_service_request_maps_to_envelope(pnr: str) -> None:
    sr = service_request(pnr)
    validate(sr)
    env = map_resource(sr, raw(sr), "millennium")
    assert env.kind == "lab_order"
    assert env.subtype == "ServiceRequest"
    assert env.patient.value == pnr and env.patient.type == "personnummer"
    assert env.sender.unit_hsa_id == SENDER and env.sender.system == "millennium"
    assert env.receiver.unit_hsa_id == RECEIVER
    assert env.correlation.placer_order_number == "PO-sr-1"
    assert env.payload.format == "fhir_r4_json" and env.payload.data == raw(sr)
    assert env.event_time_ms == int(dt.datetime(2026, 11, 23, 8, tzinfo=dt.UTC).timestamp() * 1000)
    assert env.source == "fhir-in:millennium"


def test_referral_service_request_is_remiss_skickad(pnr: str) -> None:
    sr = service_request(pnr, category="3457005")
    env = map_resource(sr, raw(sr), "millennium")
    assert (env.kind, env.status, env.correlation.referral_id) == ("remiss", "skickad", "PO-sr-1")


def test_contained_patient_and_practitioner_role(pnr: str) -> None:
    samordning = test_personnummer(random.Random(9), samordning=True)
    sr = service_request(pnr, contained=[
        {"resourceType": "Patient", "id": "p",
         "identifier": [{"system": "urn:other", "value": "x"},
                        {"system": f"urn:oid:{OID_SAMORDNINGSNUMMER}", "value": samordning}]},
        {"resourceType": "PractitionerRole", "id": "r",
         "identifier": [{"system": HSA, "value": "SE2321000131-P000000000001"}],
         "organization": hsa_ref(SENDER)},
    ])
    sr["subject"] = {"reference": "#p"}
    sr["requester"] = {"reference": "#r"}
    validate(sr)
    env = map_resource(sr, raw(sr), "millennium")
    assert env.patient.type == "samordningsnummer" and env.patient.value == samordning
    assert env.sender.unit_hsa_id == SENDER  # the role's organization, i.e. the unit


def test_task_status_change_maps_to_referral_answer(pnr: str) -> None:
    t = task(pnr, "completed")
    validate(t)
    env = map_resource(t, raw(t), "millennium")
    assert (env.kind, env.status, env.subtype) == ("remiss", "besvarad", "Task")
    # an answer goes from the owner back to the requester
    assert env.sender.unit_hsa_id == RECEIVER and env.receiver.unit_hsa_id == SENDER
    assert env.correlation.referral_id == "RF-77"
    assert env.correlation.in_reply_to == "ServiceRequest/RF-77"
    forward = map_resource(task(pnr, "requested"), raw(task(pnr, "requested")), "millennium")
    assert forward.status == "skickad" and forward.sender.unit_hsa_id == SENDER


@pytest.mark.parametrize("status,word", [("received", "mottagen"), ("accepted", "accepterad"),
                                         ("rejected", "avvisad"), ("completed", "besvarad")])
def test_task_status_words(pnr: str, status: str, word: str) -> None:
    assert map_resource(task(pnr, status), b"{}", "millennium").status == word


def test_message_id_is_stable_for_a_resend_and_new_for_a_status_change(pnr: str) -> None:
    sr = service_request(pnr)
    a = map_resource(sr, raw(sr), "millennium", received_ms=1)
    b = map_resource(copy.deepcopy(sr), raw(sr), "millennium", received_ms=2)
    assert a.message_id == b.message_id
    assert message_id("millennium", sr) != message_id("melior", sr)
    assert message_id("millennium", task(pnr, "accepted")) != message_id("millennium", task(pnr, "completed"))
    other = service_request(pnr, rid="sr-2")
    assert message_id("millennium", other) != a.message_id


def invalid(fn: Any, *args: Any) -> FhirInputError:
    with pytest.raises(FhirInputError) as info:
        fn(*args)
    return info.value


def test_validation_rejects_non_fhir_without_echoing_the_patient(pnr: str) -> None:
    sr = service_request(pnr, bogus=pnr)  # unknown element carrying the number
    err = invalid(validate, sr)
    assert err.status == 400
    text = orjson.dumps(operation_outcome(err.problems)).decode() + str(err)
    assert "bogus" in text and pnr not in text and pnr[2:8] not in text
    sr = service_request(pnr)
    del sr["intent"]
    assert "ServiceRequest.intent" in str(invalid(validate, sr))
    assert invalid(validate, service_request(pnr, status="sent")).problems[0].code == "code-invalid"
    assert invalid(validate, service_request(pnr, authoredOn="yesterday")).status == 400
    assert invalid(parse_json, b"{not json").status == 400
    assert invalid(parse_json, b"[1, 2]").status == 400
    assert invalid(validate, {"resourceType": "Patient"}).status == 400


def test_mapping_problems_are_422_and_redacted(pnr: str) -> None:
    bad_luhn = pnr[:-1] + str((int(pnr[-1]) + 1) % 10)
    err = invalid(map_resource, service_request(bad_luhn), b"{}", "millennium")
    assert err.status == 422 and "Luhn" in str(err) and bad_luhn not in str(err)
    sr = service_request(pnr)
    sr["subject"] = {"reference": "Patient/123"}
    assert "personnummer" in str(invalid(map_resource, sr, b"{}", "millennium"))
    assert "category" in str(invalid(map_resource, service_request(pnr, category="999"), b"{}", "millennium"))
    sr = service_request(pnr)
    sr["performer"] = [{"identifier": {"system": HSA, "value": "SE123-X"}}]
    assert "HSA-id" in str(invalid(map_resource, sr, b"{}", "millennium"))
    assert "Task.status" in str(invalid(map_resource, task(pnr, "failed"), b"{}", "millennium"))


def bundle(btype: str, pnr: str, *resources: dict[str, Any]) -> dict[str, Any]:
    patient = {"resourceType": "Patient", "id": "pat", "identifier": [{"system": PNR, "value": pnr}]}
    entries = [{"fullUrl": "urn:uuid:11111111-1111-4111-8111-111111111111", "resource": patient,
                "request": {"method": "POST", "url": "Patient"}}]
    for r in resources:
        entries.append({"fullUrl": f"urn:uuid:{r['id']}", "resource": r,
                        "request": {"method": "POST", "url": r["resourceType"]}})
    return {"resourceType": "Bundle", "type": btype, "entry": entries}


def test_transaction_bundle_entries_become_standalone_envelopes(pnr: str) -> None:
    sr = service_request(pnr, rid="a")
    sr["subject"] = {"reference": "urn:uuid:11111111-1111-4111-8111-111111111111"}
    b = bundle("transaction", pnr, sr, task(pnr, "received", "t"))
    validate(b)
    results = map_bundle(b, "millennium")
    assert [r.resource_type for r in results] == ["ServiceRequest", "Task"]
    envs = [r.envelope for r in results]
    assert all(e is not None for e in envs)
    assert envs[0].patient.value == pnr  # type: ignore[union-attr]
    # the payload stands alone: the bundle-local reference became an identifier reference
    payload = orjson.loads(envs[0].payload.data)  # type: ignore[union-attr]
    assert payload["subject"] == {"type": "Patient", "identifier": {"system": PNR, "value": pnr}}
    assert envs[1].status == "mottagen"  # type: ignore[union-attr]


def test_bundle_references_to_roles_and_patients_with_several_identifiers(pnr: str) -> None:
    sr = service_request(pnr, rid="c")
    sr["subject"] = {"reference": "Patient/pat"}
    sr["requester"] = {"reference": "urn:uuid:role"}
    b = bundle("collection", pnr, sr)
    b["entry"][0]["resource"]["identifier"].insert(0, {"system": "urn:local:mrn", "value": "MRN1"})
    b["entry"] += [
        {"fullUrl": "urn:uuid:role", "resource": {"resourceType": "PractitionerRole", "id": "role",
                                                  "organization": {"reference": "Organization/o"}}},
        {"fullUrl": "urn:uuid:org", "resource": {"resourceType": "Organization", "id": "o",
                                                 "identifier": [{"system": HSA, "value": SENDER}]}},
    ]
    validate(b)
    [result] = map_bundle(b, "millennium")
    assert result.envelope is not None and result.envelope.sender.unit_hsa_id == SENDER
    payload = orjson.loads(result.envelope.payload.data)
    assert payload["subject"] == {"type": "Patient", "identifier": {"system": PNR, "value": pnr}}
    assert payload["requester"] == {"type": "Organization", "identifier": {"system": HSA, "value": SENDER}}


def test_bundle_entry_errors_and_types(pnr: str) -> None:
    good = service_request(pnr, rid="g")
    bad = service_request(pnr, rid="b", category="999")
    results = map_bundle(bundle("batch", pnr, good, bad), "millennium")
    assert results[0].envelope is not None and results[1].error is not None
    assert "Bundle.entry[2]" in str(results[1].error.problems[0].diagnostics)
    assert invalid(map_bundle, bundle("message", pnr, good), "millennium").status == 422
    assert "no ServiceRequest" in str(invalid(map_bundle, bundle("collection", pnr), "millennium"))


def test_prepare_adds_the_message_id_identifier_once(pnr: str) -> None:
    rtype, body = prepare(raw(service_request(pnr)), "m-1")
    doc = orjson.loads(body)
    assert rtype == "ServiceRequest"
    assert doc["identifier"][-1] == {"system": "urn:samex:message-id", "value": "m-1"}
    _, again = prepare(body, "m-1")
    assert len(orjson.loads(again)["identifier"]) == len(doc["identifier"])
    with pytest.raises(ValueError):
        prepare(b"[]", "m")


def test_backoff_is_capped_exponential_and_answers_classify() -> None:
    b = Backoff(base_s=0.1, cap_s=1.0, jitter=0.0)
    assert [b.delay(n) for n in range(1, 7)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert Attempt(201, "").acknowledged and Attempt(200, "").acknowledged
    assert Attempt(422, "").rejected and not Attempt(429, "").rejected and not Attempt(503, "").rejected
    assert not Attempt(0, "timeout").rejected and not Attempt(0, "timeout").acknowledged


def test_unknown_nested_resource_type_is_a_400(pnr: str) -> None:
    sr = service_request(pnr, contained=[{"resourceType": "Nonsense", "id": "x"}])
    assert invalid(validate, sr).status == 400


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(field=st.sampled_from(["subject", "requester", "performer", "category", "status", "identifier",
                              "authoredOn", "contained", "intent", "code"]),
       value=json_values)
def test_any_corruption_is_refused_cleanly_or_mapped(field: str, value: Any) -> None:
    pnr = test_personnummer(random.Random(77))
    sr = service_request(pnr)
    sr[field] = value
    try:
        validate(sr)
        env = map_resource(sr, raw(sr), "millennium")
    except FhirInputError as exc:
        assert exc.status in (400, 422)
        assert pnr not in str(exc) and pnr[2:] not in str(exc)
        return
    assert env.patient.value and env.sender.unit_hsa_id


def test_register_fhir_adds_the_commands() -> None:
    import click
    from click.testing import CliRunner

    from connectors.fhir_cli import register_fhir

    @click.group()
    def connector() -> None: ...

    @click.group()
    def simulate() -> None: ...

    register_fhir(connector, simulate)
    assert {"fhir-in", "fhir-out"} <= set(connector.commands) and "millennium-fhir" in simulate.commands
    result = CliRunner().invoke(connector, ["fhir-out", "--help"])
    assert result.exit_code == 0 and "--base" in result.output and "--system" in result.output


def test_simulated_sender_traffic_validates_and_maps() -> None:
    from connectors.sim_fhir import synthetic_resources
    from router.synth import load_units

    rng = random.Random(4)
    pool = [test_personnummer(rng, samordning=(i % 5 == 0)) for i in range(30)]
    gen = synthetic_resources(rng, load_units(), pool)
    seen: Counter[tuple[str, str | None]] = Counter()
    for _ in range(300):
        res = next(gen)
        validate(res)
        env = map_resource(res, raw(res), "millennium")
        assert env.sender.unit_hsa_id != env.receiver.unit_hsa_id
        seen[(env.kind, env.subtype)] += 1
    assert set(seen) == {("lab_order", "ServiceRequest"), ("remiss", "ServiceRequest"), ("remiss", "Task")}
