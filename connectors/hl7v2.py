"""HL7 v2 (ER7) to envelope: a small parser, the mapping per message type, and ACKs.

Pure functions on bytes and frozen values; no sockets here. The field mapping is documented in
docs/hl7-mapping.md. Error texts never contain field values that could be a patient identifier.

* Character set: MSH-18 decides (``UNICODE UTF-8`` / ``8859/1``; ASCII is read as UTF-8); an
  empty MSH-18 uses ``default_charset``. Bytes that do not decode in the declared set are a
  :class:`CharsetError` (answered ``AE``).
* message_id: UUIDv5 of the sending facility and MSH-10, so a sender's retransmission after a
  lost ACK maps to the same message id (and the outbound connectors drop the duplicate).
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import itertools
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ValidationError

from router.envelope import Envelope, Kind
from router.errors import IdentifierError, MappingError
from router.identifiers import (
    OID_BY_TYPE,
    OID_PERSONNUMMER,
    OID_SAMORDNINGSNUMMER,
    TYPE_BY_OID,
    parse_patient_id,
    redact,
    validate_hsa_id,
)
from router.timeutil import STOCKHOLM

#: Namespace of the stable message ids of HL7 v2 messages (uuid5 of "<sending facility>|<MSH-10>").
HL7_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:samex:hl7v2:message-id")

AckCode = Literal["AA", "AE", "AR"]

CHARSETS: dict[str, str] = {
    "": "",  # -> default
    "UNICODE UTF-8": "utf-8",
    "UTF-8": "utf-8",
    "UTF8": "utf-8",
    "ASCII": "utf-8",  # ASCII is a subset; read it as UTF-8
    "8859/1": "latin-1",
    "ISO-8859-1": "latin-1",
    "ISO8859-1": "latin-1",
}
#: MSH-18 value written for a Python codec name (ACKs echo the charset of the message).
MSH18_OF = {"utf-8": "UNICODE UTF-8", "latin-1": "8859/1"}


class Hl7Error(MappingError):
    """An HL7 v2 message that cannot be mapped (answered AE, dead-lettered at mllp-in)."""


class NotHl7Error(Hl7Error):
    """The bytes are not an ER7 message: no MSH segment or broken delimiters."""


class CharsetError(Hl7Error):
    """MSH-18 names an unsupported character set, or the bytes do not decode in the declared one."""


class UnsupportedTypeError(Hl7Error):
    """A message type (MSH-9) samex does not route."""


class MissingFieldError(Hl7Error):
    """A field the mapping needs is empty."""


class PatientError(Hl7Error):
    """PID-3 has no valid personnummer or samordningsnummer."""


# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------

_SEG_SPLIT = re.compile(r"\r\n|\r|\n")
_SEGMENT_ID = re.compile(r"[A-Z][A-Z0-9]{2}")
_DTM = re.compile(r"(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,4}))?([+-]\d{4})?")


@dataclass(frozen=True)
class Delimiters:
    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"


@dataclass(frozen=True)
class Message:
    """A parsed ER7 message: segments as lists of raw (still escaped) field strings.

    ``segments[i][0]`` is the segment id; for MSH, index n is MSH-n (MSH-1 is the field separator).
    """

    segments: tuple[tuple[str, ...], ...]
    delims: Delimiters
    charset: str

    def segment(self, name: str) -> tuple[str, ...] | None:
        for seg in self.segments:
            if seg[0] == name:
                return seg
        return None

    def all(self, name: str) -> list[tuple[str, ...]]:
        return [seg for seg in self.segments if seg[0] == name]

    def raw(self, name: str, field: int) -> str:
        seg = self.segment(name)
        if seg is None or field >= len(seg):
            return ""
        return seg[field]

    def get(self, name: str, field: int, component: int = 1, sub: int = 1, rep: int = 0) -> str:
        """Unescaped value of NAME-field.component.subcomponent of repetition ``rep`` ('' when absent)."""
        return component_of(self.raw(name, field), self.delims, component, sub, rep)

    @property
    def control_id(self) -> str:
        return self.get("MSH", 10)

    @functools.cached_property
    def message_type(self) -> tuple[str, str]:
        return self.get("MSH", 9, 1).upper(), self.get("MSH", 9, 2).upper()


def component_of(value: str, d: Delimiters, component: int = 1, sub: int = 1, rep: int = 0) -> str:
    if not value:
        return ""
    if d.repetition not in value and d.component not in value and d.subcomponent not in value:
        # a plain value (most fields): no splitting needed
        return unescape(value, d) if rep == 0 and component == 1 and sub == 1 else ""
    reps = value.split(d.repetition)
    if rep >= len(reps):
        return ""
    comps = reps[rep].split(d.component)
    if component > len(comps):
        return ""
    subs = comps[component - 1].split(d.subcomponent)
    if sub > len(subs):
        return ""
    return unescape(subs[sub - 1], d)


def unescape(text: str, d: Delimiters) -> str:
    e = d.escape
    if not e or e not in text:
        return text
    table = {"F": d.field, "S": d.component, "T": d.subcomponent, "R": d.repetition, "E": d.escape}
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == e:
            j = text.find(e, i + 1)
            if j > i + 1 and text[i + 1:j] in table:
                out.append(table[text[i + 1:j]])
                i = j + 1
                continue
            if j > i + 1 and text[i + 1] in "HN":  # highlighting: drop
                i = j + 1
                continue
        out.append(text[i])
        i += 1
    return "".join(out)


def escape(text: str, d: Delimiters = Delimiters()) -> str:
    e = d.escape
    out = text.replace(e, f"{e}E{e}")
    for ch, code in ((d.field, "F"), (d.component, "S"), (d.subcomponent, "T"), (d.repetition, "R")):
        out = out.replace(ch, f"{e}{code}{e}")
    return out.replace("\r", " ").replace("\n", " ")


def _msh_bytes(data: bytes) -> tuple[list[bytes], bytes]:
    """Fields of the MSH segment as bytes (MSH-n at index n) and the field separator."""
    start = data.find(b"MSH")
    if start < 0 or len(data) < start + 8:
        raise NotHl7Error("the message does not start with an MSH segment")
    if data[:start].strip(b"\x0b \t\r\n\xef\xbb\xbf"):
        raise NotHl7Error("the message does not start with an MSH segment")
    end = len(data)
    for stop in (b"\r", b"\n"):
        k = data.find(stop, start)
        if k >= 0:
            end = min(end, k)
    line = data[start:end]
    sep = line[3:4]
    if sep.isalnum() or sep in (b" ", b"\\"):
        raise NotHl7Error("MSH-1 (field separator) is not a delimiter character")
    parts = line.split(sep)
    # parts[0] = "MSH", parts[1] = MSH-2; MSH-n = parts[n-1]  -> shift so index n is MSH-n
    return [b"MSH", sep, *parts[1:]], sep


def declared_charset(data: bytes, default_charset: str = "utf-8") -> str:
    """The Python codec MSH-18 asks for (``default_charset`` when it is empty)."""
    fields, _ = _msh_bytes(data)
    raw = fields[18] if len(fields) > 18 else b""
    label = raw.decode("ascii", errors="replace").split("~")[0].split("^")[0].strip().upper()
    if label not in CHARSETS:
        raise CharsetError(f"MSH-18 character set {label[:20]!r} is not supported (UTF-8 or 8859/1)")
    return CHARSETS[label] or default_charset


def parse(data: bytes, default_charset: str = "utf-8") -> Message:
    """Parse ER7 bytes (without MLLP framing) into a :class:`Message`."""
    charset = declared_charset(data, default_charset)
    try:
        text = data.decode(charset)
    except UnicodeDecodeError:
        raise CharsetError(f"the message bytes are not valid {charset.upper()} (MSH-18 or the default "
                           "character set does not match the bytes)") from None
    text = text.lstrip("\ufeff\x0b \t\r\n").rstrip("\x1c\r\n ")
    if not text.startswith("MSH"):
        raise NotHl7Error("the message does not start with an MSH segment")
    fsep = text[3]
    enc = text[4:8].split(fsep)[0]
    if len(enc) < 2:
        raise NotHl7Error("MSH-2 (encoding characters) is incomplete")
    d = Delimiters(fsep, enc[0], enc[1], enc[2] if len(enc) > 2 else "", enc[3] if len(enc) > 3 else "&")
    segments: list[tuple[str, ...]] = []
    for line in _SEG_SPLIT.split(text):
        if not line.strip():
            continue
        if line.startswith("MSH"):
            parts = line.split(fsep)
            seg = ("MSH", fsep, *parts[1:])
        else:
            seg = tuple(line.split(fsep))
        if not _SEGMENT_ID.fullmatch(seg[0]):
            raise NotHl7Error(f"segment {len(segments) + 1} has no valid segment id")
        segments.append(seg)
    return Message(tuple(segments), d, charset)


# --------------------------------------------------------------------------------------------
# Mapping
# --------------------------------------------------------------------------------------------

#: (MSH-9.1, MSH-9.2) -> kind; trigger "*" = any trigger of that message type.
KIND_OF: dict[tuple[str, str], Kind] = {
    ("REF", "I12"): "remiss",
    ("REF", "I13"): "remiss",
    ("REF", "I14"): "remiss",
    ("REF", "I15"): "remiss",
    ("RRI", "I12"): "remiss",
    ("RRI", "I13"): "remiss",
    ("RRI", "I14"): "remiss",
    ("RRI", "I15"): "remiss",
    ("OML", "O21"): "lab_order",
    ("ORM", "O01"): "lab_order",
    ("ORU", "R01"): "lab_result",
    ("MDM", "*"): "info",
}

#: RF1-1 referral status -> envelope status (Swedish referral status words).
REFERRAL_STATUS = {"P": "skickad", "N": "skickad", "M": "mottagen", "R": "mottagen", "A": "accepterad",
                   "D": "avvisad", "X": "avvisad", "E": "avvisad", "C": "besvarad", "F": "besvarad"}
#: Trigger-based default status when RF1-1 is empty.
REFERRAL_TRIGGER_STATUS = {("REF", "I12"): "skickad", ("REF", "I13"): "skickad", ("REF", "I14"): "avvisad",
                           ("RRI", "I12"): "besvarad", ("RRI", "I13"): "besvarad", ("RRI", "I14"): "avvisad"}
RESULT_STATUS = {"P", "F", "C", "X", "I", "R", "S", "A"}
_HSA_SHAPE = re.compile(r"^SE\d{10}-[A-Za-z0-9]+$")
_PNR_LAYOUT = re.compile(r"^\d{6}(\d{2})?[-+]?\d{4}$")  # YYMMDD or YYYYMMDD, a separator or none, NNNC


def kind_of(msg: Message) -> Kind:
    mtype, trigger = msg.message_type
    if not mtype:
        raise MissingFieldError("MSH-9 (message type) is empty")
    kind = KIND_OF.get((mtype, trigger)) or KIND_OF.get((mtype, "*"))
    if kind is None:
        shown = re.sub(r"[^A-Z0-9^]", "", f"{mtype}^{trigger}" if trigger else mtype)[:12]
        without = "" if trigger else ", no trigger event"
        raise UnsupportedTypeError(f"unsupported message type {shown} (MSH-9{without})")
    return kind


def facility_hsa(msg: Message, field: int) -> str:
    """The unit HSA-id in MSH-4/MSH-6: HD.1 when it is an HSA-id, else HD.2 when HD.3 is 'HSA'
    (docs/hl7-mapping.md). An HSA-id in HD.2 under another universal ID type (DNS, ISO, ...) is
    not taken: it names something else."""
    name = "sending" if field == 4 else "receiving"
    hd1, hd2, hd3 = (msg.get("MSH", field, c) for c in (1, 2, 3))
    if _HSA_SHAPE.match(hd1):
        return hd1
    if hd2 and hd3.strip().upper() == "HSA":
        if _HSA_SHAPE.match(hd2):
            return hd2
        raise Hl7Error(f"MSH-{field} ({name} facility): HD.3 is HSA but HD.2 is not an HSA-id")
    if not (hd1 or hd2):
        raise MissingFieldError(f"MSH-{field} ({name} facility) is empty; it must carry the unit's HSA-id")
    raise Hl7Error(f"MSH-{field} ({name} facility) does not carry an HSA-id (HD.1, or HD.2 with HD.3 = HSA)")


def patient_of(msg: Message) -> tuple[str, str]:
    """(normalised 12 digits, type) from PID-3: the repetition whose assigning authority is the
    personnummer or samordningsnummer OID; otherwise the first repetition that is a valid number."""
    pid = msg.segment("PID")
    if pid is None:
        raise PatientError("the message has no PID segment (patient identifier)")
    raw = pid[3] if len(pid) > 3 else ""
    if not raw:
        raise PatientError("PID-3 (patient identifier) is empty")
    d = msg.delims
    reps = raw.split(d.repetition)
    declared: list[tuple[str, str]] = []
    loose: list[str] = []
    for i in range(len(reps)):
        value = component_of(raw, d, 1, 1, i).strip()
        authority = {component_of(raw, d, 4, s, i).strip() for s in (1, 2)}
        oid = next((o for o in (OID_PERSONNUMMER, OID_SAMORDNINGSNUMMER) if o in authority), None)
        if oid:
            declared.append((value, TYPE_BY_OID[oid]))
        elif value:
            loose.append(value)
    for value, kind in declared:
        try:
            norm, real = parse_patient_id(value)
        except IdentifierError as exc:
            raise PatientError(f"invalid patient identifier in PID-3: {exc}") from None
        if real != kind:
            raise PatientError(f"invalid patient identifier in PID-3: a {real} under the {kind} OID")
        return norm, real
    shaped: IdentifierError | None = None  # why the first value laid out like a personnummer failed
    for value in loose:
        try:
            return parse_patient_id(value)
        except IdentifierError as exc:
            if shaped is None and _PNR_LAYOUT.match(value):
                shaped = exc
    if shaped is not None:  # e.g. a wrong check digit: say so, not that there is no number
        raise PatientError(f"invalid patient identifier in PID-3: {shaped}")
    raise PatientError("PID-3 has no patient identifier: no personnummer or samordningsnummer "
                       "(OID 1.2.752.129.2.1.3.1 / .3)")


def parse_ts(value: str) -> int | None:
    """HL7 DTM (YYYY[MM[DD[HH[MM[SS[.S]]]]]][+/-ZZZZ]) to epoch ms; no zone = Europe/Stockholm."""
    m = _DTM.fullmatch(value.strip())
    if not m:
        return None
    y, mo, d, h, mi, s, frac, zone = m.groups()
    try:
        tz: dt.tzinfo = STOCKHOLM
        if zone:
            sign = 1 if zone[0] == "+" else -1
            tz = dt.timezone(sign * dt.timedelta(hours=int(zone[1:3]), minutes=int(zone[3:5])))
        micro = int((frac or "0").ljust(6, "0")[:6])
        t = dt.datetime(int(y), int(mo or 1), int(d or 1), int(h or 0), int(mi or 0), int(s or 0), micro, tzinfo=tz)
    except ValueError:
        return None
    return int(t.timestamp() * 1000)


_NS_BYTES = HL7_NAMESPACE.bytes


def stable_message_id(sending_facility: str, control_id: str) -> str:
    """``str(uuid.uuid5(HL7_NAMESPACE, "<facility>|<MSH-10>"))``, computed without the UUID object
    (a measurable share of mllp-in's CPU per message)."""
    h = bytearray(hashlib.sha1(_NS_BYTES + f"{sending_facility}|{control_id}".encode(), usedforsecurity=False)
                  .digest()[:16])
    h[6] = (h[6] & 0x0F) | 0x50  # version 5
    h[8] = (h[8] & 0x3F) | 0x80  # RFC 4122 variant
    x = h.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


def _first(*values: str) -> str | None:
    for v in values:
        if v:
            return v
    return None


def _correlation(placer: str | None = None, filler: str | None = None, referral: str | None = None,
                 reply: str | None = None) -> dict[str, str | None]:
    return {"placer_order_number": placer, "filler_order_number": filler, "referral_id": referral,
            "in_reply_to": reply}


def correlation_of(msg: Message, kind: Kind) -> tuple[dict[str, str | None], str | None]:
    """Correlation ids (the envelope's correlation record) and status of a message of ``kind``."""
    if kind == "remiss":
        mtype, trigger = msg.message_type
        ref = _first(msg.get("RF1", 6), msg.get("RF1", 11))
        status_code = msg.get("RF1", 1).upper()
        status = REFERRAL_STATUS.get(status_code) or REFERRAL_TRIGGER_STATUS.get((mtype, trigger))
        reply = msg.get("MSA", 2) or None if mtype == "RRI" else None
        return _correlation(referral=ref, reply=reply), status
    if kind == "lab_order":
        placer = _first(msg.get("ORC", 2), msg.get("OBR", 2))
        filler = _first(msg.get("ORC", 3), msg.get("OBR", 3))
        return _correlation(placer, filler), None
    if kind == "lab_result":
        placer = _first(msg.get("OBR", 2), msg.get("ORC", 2))
        filler = _first(msg.get("OBR", 3), msg.get("ORC", 3))
        status = msg.get("OBR", 25).upper() or msg.get("OBX", 11).upper()
        return _correlation(placer, filler), (status if status in RESULT_STATUS else None)
    # info (MDM): TXA-12 unique document number, TXA-13 parent document
    return _correlation(reply=msg.get("TXA", 13) or None), msg.get("TXA", 17) or None


def _valid_hsa(value: str, party: str) -> str:
    try:
        return validate_hsa_id(value)
    except IdentifierError as exc:
        raise Hl7Error(f"cannot build the envelope: {party}.unit_hsa_id: {redact(str(exc))[:160]}") from None


def envelope_record(msg: Message, data: bytes, *, received_ms: int | None = None,
                    source: str = "mllp-in") -> dict[str, Any]:
    """The envelope's Avro record of a parsed message, without building the pydantic model.

    Checks everything :class:`Envelope` would: the HSA-ids (:func:`validate_hsa_id`) and the patient
    identifier (:func:`patient_of` parses and normalises it); message id, trace id, kind and sha256 are
    valid by construction. :func:`map_message` validates this very record with :class:`Envelope`, so the
    mapping tests cover it; mllp-in uses it directly (about a third less CPU per message)."""
    kind = kind_of(msg)
    control_id = msg.control_id
    if not control_id:
        raise MissingFieldError("MSH-10 (message control id) is empty")
    sender_hsa = _valid_hsa(facility_hsa(msg, 4), "sender")
    receiver_hsa = _valid_hsa(facility_hsa(msg, 6), "receiver")
    pnr, ptype = patient_of(msg)
    correlation, status = correlation_of(msg, kind)
    mtype, trigger = msg.message_type
    message_id = stable_message_id(sender_hsa, control_id)
    return {
        "message_id": message_id,
        "source_message_id": control_id[:200],
        "kind": kind,
        "subtype": f"{mtype}^{trigger}",
        "status": status,
        "patient": {"id": pnr, "id_type": ptype, "oid": OID_BY_TYPE[ptype]},
        "sender": {"unit_hsa_id": sender_hsa, "care_provider_hsa_id": None, "system": msg.get("MSH", 3) or None},
        "receiver": {"unit_hsa_id": receiver_hsa, "care_provider_hsa_id": None,
                     "system": msg.get("MSH", 5) or None},
        "correlation": correlation,
        "event_time_ms": parse_ts(msg.get("MSH", 7)),
        "received_time_ms": received_ms if received_ms is not None else int(time.time() * 1000),
        "source": source,
        "trace_id": message_id.replace("-", "")[:16],
        "payload": {"format": "hl7v2", "content_type": f"application/hl7-v2; charset={msg.charset}",
                    "data": bytes(data), "sha256": hashlib.sha256(data).hexdigest()},
    }


def map_message(msg: Message, data: bytes, *, received_ms: int | None = None, source: str = "mllp-in") -> Envelope:
    record = envelope_record(msg, data, received_ms=received_ms, source=source)
    try:
        return Envelope.from_record(record)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise Hl7Error(f"cannot build the envelope: {loc}: {redact(str(first['msg']))[:160]}") from None


def map_hl7(data: bytes, *, received_ms: int | None = None, source: str = "mllp-in",
            default_charset: str = "utf-8") -> Envelope:
    """Map one ER7 message (bytes, no MLLP framing) to an :class:`Envelope`; raises :class:`Hl7Error`."""
    return map_message(parse(data, default_charset), data, received_ms=received_ms, source=source)


@dataclass(frozen=True)
class Mapped:
    """A message mapped for mllp-in: the envelope record and the header its ACK answers."""

    record: dict[str, Any]
    header: Header

    @property
    def message_id(self) -> str:
        return str(self.record["message_id"])

    @property
    def trace_id(self) -> str:
        return str(self.record["trace_id"])

    @property
    def kind(self) -> str:
        return str(self.record["kind"])

    @property
    def patient(self) -> str:
        """The normalised patient identifier (only to compute the Kafka key hash; never log it)."""
        return str(self.record["patient"]["id"])


def map_hl7_record(data: bytes, *, received_ms: int | None = None, source: str = "mllp-in",
                   default_charset: str = "utf-8") -> Mapped:
    """:func:`map_hl7` for the hot path: the same checks and values, as the Avro record (no pydantic
    model), plus the ACK header read from the same parse; raises :class:`Hl7Error`."""
    msg = parse(data, default_charset)
    return Mapped(envelope_record(msg, data, received_ms=received_ms, source=source), header_from(msg))


# --------------------------------------------------------------------------------------------
# ACKs
# --------------------------------------------------------------------------------------------

_ack_counter = itertools.count(1)
_last_ts: tuple[int, str] = (-1, "")


def _ack_ts(second: int) -> str:
    """MSH-7 of an ACK (Stockholm time with offset), formatted once per second."""
    global _last_ts
    if _last_ts[0] != second:
        now = dt.datetime.fromtimestamp(second, STOCKHOLM)
        _last_ts = (second, now.strftime("%Y%m%d%H%M%S") + now.strftime("%z"))
    return _last_ts[1]


@dataclass(frozen=True)
class Header:
    """What an ACK needs from the message it answers (best effort, also for broken input)."""

    sending_app: str = ""
    sending_facility: str = ""
    receiving_app: str = ""
    receiving_facility: str = ""
    control_id: str = ""
    trigger: str = ""
    version: str = "2.5.1"
    charset: str = "utf-8"


def header_of(data: bytes, default_charset: str = "utf-8") -> Header:
    """MSH fields for the ACK, without raising: empty values for what cannot be read."""
    try:
        fields, _ = _msh_bytes(data)
    except Hl7Error:
        return Header(charset=default_charset)
    try:
        charset = declared_charset(data, default_charset)
    except Hl7Error:
        charset = default_charset

    def f(n: int) -> str:
        if n >= len(fields):
            return ""
        return fields[n].decode(charset, errors="replace")[:227]

    comp = fields[2][:1].decode("latin-1") if len(fields) > 2 and fields[2] else "^"
    trigger = f(9).split(comp)[1] if comp in f(9) else ""
    return Header(f(3), f(4), f(5), f(6), f(10), trigger[:3], f(12).split(comp)[0] or "2.5.1", charset)


def header_from(msg: Message) -> Header:
    """:func:`header_of` of a message that parsed (the same values, without reading MSH again)."""
    msh = msg.segments[0]

    def f(n: int) -> str:
        return msh[n][:227] if n < len(msh) else ""

    comp = msg.delims.component
    trigger = f(9).split(comp)[1] if comp in f(9) else ""
    return Header(f(3), f(4), f(5), f(6), f(10), trigger[:3], f(12).split(comp)[0] or "2.5.1", msg.charset)


def _ack_text(text: str) -> str:
    return escape(redact(text))[:200]


def build_ack(header: Header, code: AckCode, text: str = "", *, app: str = "SAMEX", now_ms: int | None = None) -> bytes:
    """An ACK (MSH, MSA, and ERR for AE/AR) answering ``header``: MSA-2 echoes MSH-10, MSA-3 is ``text``."""
    ts = _ack_ts(int((now_ms if now_ms is not None else time.time() * 1000) // 1000))
    control = f"ACK{int(time.time() * 1000)}{next(_ack_counter) % 100000:05d}"
    charset = header.charset if header.charset in MSH18_OF else "utf-8"
    msh = ["MSH", "^~\\&", header.receiving_app or app, header.receiving_facility, header.sending_app,
           header.sending_facility, ts, "", f"ACK^{header.trigger}^ACK" if header.trigger else "ACK",
           control, "P", header.version or "2.5.1", "", "", "", "", "", MSH18_OF[charset]]
    segs = ["|".join(msh), "|".join(["MSA", code, header.control_id, _ack_text(text)])]
    if code != "AA" and text:
        severity = "E"
        segs.append("|".join(["ERR", "", "", "207^Application internal error^HL70357" if code == "AR"
                              else "101^Required field missing^HL70357" if "empty" in text
                              else "207^Application internal error^HL70357", severity, "", "", "",
                              _ack_text(text)]))
    return ("\r".join(segs) + "\r").encode(charset, errors="replace")


@dataclass(frozen=True)
class Ack:
    code: str  # AA, AE, AR (or CA/CE/CR, normalised to AA/AE/AR)
    control_id: str  # MSA-2
    text: str  # MSA-3 (and ERR-8 when MSA-3 is empty)


def parse_ack(data: bytes, default_charset: str = "utf-8") -> Ack:
    """Read an ACK: MSA-1, MSA-2, MSA-3. Raises :class:`Hl7Error` when there is no MSA segment."""
    msg = parse(data, default_charset)
    code = msg.get("MSA", 1).upper()
    if not code:
        raise Hl7Error("the answer has no MSA segment (not an ACK)")
    code = {"CA": "AA", "CE": "AE", "CR": "AR"}.get(code, code)
    text = msg.get("MSA", 3) or msg.get("ERR", 8)
    return Ack(code, msg.get("MSA", 2), text)


def message_id_of(data: bytes, default_charset: str = "utf-8") -> str | None:
    """The stable message id of a message that may not map (for its dead letter); ``None`` if unknown."""
    try:
        msg = parse(data, default_charset)
        control_id = msg.control_id
        return stable_message_id(facility_hsa(msg, 4), control_id) if control_id else None
    except Hl7Error:
        return None
