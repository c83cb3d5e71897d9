"""A hand-written reader for the envelope's routing fields, for the hot path and dry runs.

It decodes every field a routing decision needs and skips the patient identifier (never decoded)
and the payload, about twice to three times as fast as fastavro's generic reader. Values of another
schema, or that do not read cleanly to their last byte, go to the codec, which says what is wrong.
A property test compares it with the codec.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from router.codec import Codec

_KIND_SYMBOLS = ("remiss", "lab_order", "lab_result", "info")
# Avro layout of the current envelope schema, field by field: (code, where it goes in the envelope
# dict). Codes: 0 string, 1 optional string, 2 enum/long, 3 optional long, 4 skipped string/bytes,
# 5 skipped enum, 6 skipped optional string, 7 skipped optional long.
_FIELDS: tuple[tuple[int, str | None], ...] = (
    (0, "message_id"), (1, "source_message_id"), (2, "kind"), (1, "subtype"), (1, "status"),
    (4, None), (5, None), (4, None),  # patient: id (skipped, never decoded), id_type, oid
    (0, "sender.unit_hsa_id"), (1, "sender.care_provider_hsa_id"), (1, "sender.system"),
    (0, "receiver.unit_hsa_id"), (1, "receiver.care_provider_hsa_id"), (1, "receiver.system"),
    (1, "correlation.placer_order_number"), (1, "correlation.filler_order_number"),
    (1, "correlation.referral_id"), (1, "correlation.in_reply_to"),
    (3, "event_time_ms"), (2, "received_time_ms"), (1, "source"), (1, "trace_id"),
    (5, None), (6, None), (4, None), (4, None),  # payload: format, content_type, data, sha256 (skipped)
)
_SKIPPED = {0: 4, 1: 6, 3: 7}  # the code that skips a field of each decoded code
# Fields the worker's hot path never reads (RouterCore, the engine, the order book): decode_raw skips
# them, and its envelope dict has no such keys, so a reader that wants one fails loudly. The decision
# record copies source_message_id and filler_order_number as bytes (_RAW_SPANS). Measured
# (bench/instructions.py): the reader went from 65,219 to 55,373 instructions per message.
_NOT_ON_HOT_PATH = frozenset({"source_message_id", "status", "sender.system", "receiver.care_provider_hsa_id",
                              "receiver.system", "correlation.filler_order_number", "event_time_ms"})
# Byte spans (from the start of field i to the start of field j) that the decision record repeats,
# copied as they are instead of decoded and encoded again. Each is the fields' own Avro encoding:
# message_id and source_message_id together; sender and receiver unit_hsa_id (a plain string here,
# an optional one in the decision record); placer, filler and referral id together; source; trace_id.
_RAW_SPANS = ((0, 2), (8, 9), (11, 12), (14, 17), (20, 21), (21, 22))


def _env_literal(fields: tuple[tuple[int, str | None], ...]) -> str:
    """The envelope dict as a Python literal of the decoded fields' variables (f<i>)."""
    top: dict[str, Any] = {}
    for i, (code, path) in enumerate(fields):
        if path is None or code >= 4:
            continue
        v = f"_KIND_SYMBOLS[f{i}]" if path == "kind" else f"f{i}"
        head, _, tail = path.partition(".")
        if tail:
            top.setdefault(head, {})[tail] = v
        else:
            top[head] = v
    top["patient"] = "None"

    def lit(d: dict[str, Any]) -> str:
        return "{" + ", ".join(f"{k!r}: {lit(v) if isinstance(v, dict) else v}" for k, v in d.items()) + "}"

    return lit(top)


def _zigzag(ind: str, v: str) -> list[str]:
    """Lines that read one Avro long (zigzag varint) at ``pos`` into ``v``, inlined rather than a
    call per field (six per envelope). cProfile put those calls at 8 % of ``RouterCore.process``;
    counted in instructions (bench/instructions.py) inlining saved about 1 %."""
    return [f"{ind}b = d[pos]", f"{ind}pos += 1", f"{ind}if b < 0x80:", f"{ind}    {v} = (b >> 1) ^ -(b & 1)",
            f"{ind}else:", f"{ind}    {v} = b & 0x7F", f"{ind}    sh = 7", f"{ind}    while True:",
            f"{ind}        b = d[pos]", f"{ind}        pos += 1", f"{ind}        {v} |= (b & 0x7F) << sh",
            f"{ind}        if b < 0x80:", f"{ind}            break", f"{ind}        sh += 7",
            f"{ind}    {v} = ({v} >> 1) ^ -({v} & 1)"]


def _length(ind: str) -> list[str]:
    """Lines that read a string or bytes length into ``n`` and leave ``s`` at the data's start."""
    i2, i3 = ind + "    ", ind + "        "
    return [f"{ind}n = _LEN[d[pos]]", f"{ind}if n < 0:",
            # two bytes (64 to 8,191): the payload's and the checksum's lengths
            f"{i2}n = d[pos]", f"{i2}b = d[pos + 1]", f"{i2}if n >= 0x80 and b < 0x80 and not n & 1:",
            f"{i3}n = ((n & 0x7F) | b << 7) >> 1", f"{i3}s = pos + 2", f"{i2}else:",
            *_zigzag(i3, "n"), f"{i3}if n < 0:", f"{i3}    raise ValueError('negative length')", f"{i3}s = pos",
            f"{ind}else:", f"{ind}    s = pos + 1"]


# Byte -> the length it encodes alone (a one-byte zigzag varint that is not negative), else -1.
# Strings shorter than 64 bytes, almost every field here, take one table lookup.
_LEN = tuple(b >> 1 if b < 0x80 and not b & 1 else -1 for b in range(256))


def _source_of(fields: tuple[tuple[int, str | None], ...], spans: tuple[tuple[int, int], ...] = ()) -> str:
    """Python source of a reader for ``fields``, unrolled field by field with the varints inlined: no
    per-field dispatch and no calls (this reader runs for every message; unrolled it is measurably
    faster than a loop over the fields). It returns (the envelope dict, the raw bytes of each of
    ``spans``, end position)."""
    lines = ["def _read_fields(d, pos):"]
    marks = {i for span in spans for i in span}
    for i, (code, _path) in enumerate(fields):
        v = f"f{i}"
        if i in marks:
            lines.append(f"    s{i} = pos")
        if code in (0, 1):
            ind = "    "
            if code == 1:
                lines += ["    b = d[pos]", "    if b == 0:", f"        {v} = None", "        pos += 1",
                          "    elif b != 2:", "        raise ValueError('bad union branch')", "    else:",
                          "        pos += 1"]
                ind = "        "
            lines += [*_length(ind), f"{ind}pos = s + n", f"{ind}{v} = d[s:pos].decode()"]
        elif code == 2:
            lines += _zigzag("    ", v)
        elif code == 3:
            lines += ["    if d[pos] == 0:", f"        {v} = None", "        pos += 1", "    else:",
                      "        pos += 1", *_zigzag("        ", v)]
        elif code in (4, 6):
            ind = "    "
            if code == 6:
                lines += ["    if d[pos] != 2:", "        pos += 1", "    else:", "        pos += 1"]
                ind = "        "
            lines += [*_length(ind), f"{ind}pos = s + n"]
        elif code == 7:
            lines += ["    if d[pos] == 0:", "        pos += 1", "    else:", "        pos += 1",
                      "        while d[pos] & 0x80:", "            pos += 1", "        pos += 1"]
        else:  # 5: a skipped enum
            lines += _zigzag("    ", "_e")
    if len(fields) in marks:
        lines.append(f"    s{len(fields)} = pos")
    raw = "".join(f"d[s{i}:s{j}], " for i, j in spans)
    lines += ["    if not 0 <= f2 < 4:", "        raise ValueError('kind symbol out of range')",
              f"    return {_env_literal(fields)}, ({raw}), pos"]
    return "\n".join(lines) + "\n"


Reader = Callable[[bytes, int], tuple[dict[str, Any], tuple[bytes, ...], int]]


def _compile_reader(fields: tuple[tuple[int, str | None], ...], spans: tuple[tuple[int, int], ...] = ()) -> Reader:
    namespace: dict[str, Any] = {"_KIND_SYMBOLS": _KIND_SYMBOLS, "_LEN": _LEN}
    # our own source text, from _FIELDS and _RAW_SPANS
    exec(compile(_source_of(fields, spans), "<envelope reader>", "exec"), namespace)
    return namespace["_read_fields"]  # type: ignore[no-any-return]


_read_fields = _compile_reader(_FIELDS)  # for decode: every routing field, no spans sliced that nobody uses
_read_fields_raw = _compile_reader(
    tuple((_SKIPPED[c], None) if p in _NOT_ON_HOT_PATH else (c, p) for c, p in _FIELDS), _RAW_SPANS)


class RoutingReader:
    """Decode what a re-decision needs from an envelope value of the current schema: every field but
    the patient identifier (skipped, never decoded) and the payload (skipped), with a hand-written
    Avro reader about three times as fast as the generic one, which dominates a dry run. Values of
    another schema, or that do not read cleanly to their last byte, go to the codec."""

    def __init__(self, codec: Codec) -> None:
        from router.codec import HEADER_LEN, MAGIC

        self.codec = codec
        self.prefix = MAGIC + codec.fingerprint("envelope")
        self.header_len = HEADER_LEN

    def decode(self, data: bytes) -> tuple[str, dict[str, Any]]:
        name, env, _raw = self._decode(data, _read_fields)
        return name, env

    def decode_raw(self, data: bytes) -> tuple[str, dict[str, Any], tuple[bytes, ...] | None]:
        """For the worker's hot path: like ``decode`` without the fields it never reads
        (``_NOT_ON_HOT_PATH``: absent from the dict), plus the Avro encodings of the fields the
        decision record repeats (see ``_RAW_SPANS``; ``DecisionEncoder.encode_raw``). When the codec
        decoded the value instead (not this schema, or broken), the dict is whole and the spans None."""
        return self._decode(data, _read_fields_raw)

    def peek(self, data: bytes) -> dict[str, Any] | None:
        """The routing fields of a value that will not be routed (an oversized record), read with the
        hot path's reader, which skips the payload and never decodes the patient: its message id,
        kind, trace id and units then reach the dead letter and the decision record. None when it is
        not a well-formed envelope of the current schema (the record then stays ``unknown``)."""
        if data[:self.header_len] != self.prefix:
            return None
        try:
            env, _raw, end = _read_fields(data, self.header_len)
        except (IndexError, UnicodeDecodeError, ValueError):
            return None
        return env if end == len(data) else None

    def _decode(self, data: bytes, read: Reader) -> tuple[str, dict[str, Any], tuple[bytes, ...] | None]:
        if data[:self.header_len] != self.prefix:
            return (*self.codec.decode(data), None)
        try:
            env, raw, end = read(data, self.header_len)
            if end != len(data):
                raise ValueError("trailing bytes")
        except (IndexError, UnicodeDecodeError, ValueError):
            return (*self.codec.decode(data), None)  # let the codec say what is wrong
        return "envelope", env, raw
