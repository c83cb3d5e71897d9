"""The one exception root of samex and its typed children.

Texts of these exceptions end up in logs and dead-letter reasons, so they must never contain a
patient identifier: validators describe *what* is wrong ("Luhn check digit does not match"),
never echo the value.
"""

from __future__ import annotations


class SamexError(Exception):
    """Root of every error samex raises on purpose."""


class ConfigError(SamexError):
    """Settings or command-line input that cannot be used."""


class IdentifierError(SamexError, ValueError):
    """An identifier (personnummer, samordningsnummer, HSA-id) failed validation."""


class CodecError(SamexError):
    """Bytes that are not a samex Avro record of a known schema."""


class MalformedRecordError(CodecError):
    """The bytes do not start with the Avro single-object marker or do not decode."""


class UnknownSchemaError(CodecError):
    """The record's schema fingerprint is not one this reader knows."""


class TruncatedRecordError(CodecError):
    """The record ends before its schema says it should."""


class SchemaCompatibilityError(SamexError):
    """A schema change breaks reading in one direction."""


class RulesError(SamexError):
    """A rule set that cannot be loaded; ``problems`` holds ``file:line: message`` strings."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems[:5]) + (" …" if len(self.problems) > 5 else ""))


class MappingError(SamexError):
    """An inbound message (HL7 v2, FHIR) that cannot be mapped to the envelope."""


class RoutingError(SamexError):
    """A message that cannot be routed (unknown unit, no route); becomes a dead letter."""


class KafkaUnavailableError(SamexError):
    """The broker could not be reached or did not acknowledge a write in time."""
