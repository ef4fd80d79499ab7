"""GATT writes to I4T-native BLE things, carried out by the HA integration on the gateway's behalf.

The gateway cannot reach BLE itself, so it publishes a :class:`GattRequest` on
``i4t/<gateway id>/ble/gatt/request``; the integration connects through HA's bluetooth stack
(a local adapter or an ESPHome proxy), writes the characteristic, disconnects, and answers with
a :class:`GattResult` on ``i4t/<gateway id>/ble/gatt/result`` carrying the same id. Schemas:
``ble_gatt_request`` and ``ble_gatt_result``; contract: docs/API.md, BLE.

:class:`GattRequests` keeps the pending requests by id, bounded, and ends each exactly once:
with the integration's result, or with ``timeout`` when none came in time. It is clock-free like
the health engine: the server calls ``expire(now)`` at ``next_deadline()``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
import enum
import json
import math
import os
import re
from typing import Any, Final

from .ble_common import MacError, normalise_mac

API_VERSION: Final = 1
MAX_WRITE: Final = 512
"""The ATT maximum attribute value length."""
MIN_TIMEOUT: Final = 0.5
MAX_TIMEOUT: Final = 60.0
DEFAULT_TIMEOUT: Final = 10.0
RESULT_GRACE: Final = 2.0
"""Extra wait past a request's own timeout for the integration's answer to arrive."""
MAX_PENDING: Final = 64
MAX_RESULT_BYTES: Final = 4096
MAX_DETAIL: Final = 256
_ID: Final = re.compile(r"^[0-9a-f]{32}$")
_UUID: Final = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_HEX: Final = re.compile(r"^(?:[0-9a-f]{2})+$")


def request_topic(gateway_id: str) -> str:
    return f"i4t/{gateway_id}/ble/gatt/request"


def result_topic(gateway_id: str) -> str:
    return f"i4t/{gateway_id}/ble/gatt/result"


class GattError(enum.StrEnum):
    """Why a write did not happen; the integration picks one, the tracker adds ``timeout``."""

    TIMEOUT = "timeout"
    NOT_FOUND = "not_found"
    NOT_CONNECTABLE = "not_connectable"
    CONNECT_FAILED = "connect_failed"
    SERVICE_NOT_FOUND = "service_not_found"
    CHARACTERISTIC_NOT_FOUND = "characteristic_not_found"
    WRITE_FAILED = "write_failed"
    BUSY = "busy"
    BAD_REQUEST = "bad_request"
    NOT_ALLOWED = "not_allowed"


class GattMessageError(ValueError):
    """A request or result that does not match its schema."""


@dataclass(frozen=True, slots=True)
class GattRequest:
    """Write ``data`` to one characteristic of the thing at ``address``."""

    id: str
    address: str
    service: str
    characteristic: str
    data: bytes
    timeout: float = DEFAULT_TIMEOUT
    response: bool = True
    """Write with response (the thing acknowledges) rather than write without response."""

    def __post_init__(self) -> None:
        if not _ID.match(self.id):
            raise GattMessageError("id is 32 lower-case hex digits")
        try:
            normalise_mac(self.address)
        except MacError as err:
            raise GattMessageError(str(err)) from None
        if not (_UUID.match(self.service) and _UUID.match(self.characteristic)):
            raise GattMessageError("service and characteristic are lower-case 128-bit UUIDs")
        if not 1 <= len(self.data) <= MAX_WRITE:
            raise GattMessageError(f"data is 1-{MAX_WRITE} bytes")
        if not (math.isfinite(self.timeout) and MIN_TIMEOUT <= self.timeout <= MAX_TIMEOUT):
            raise GattMessageError(f"timeout is {MIN_TIMEOUT}-{MAX_TIMEOUT} seconds")

    def to_json(self) -> dict[str, Any]:
        return {
            "api": API_VERSION,
            "id": self.id,
            "address": normalise_mac(self.address),
            "service": self.service,
            "characteristic": self.characteristic,
            "data": self.data.hex(),
            "response": self.response,
            "timeout": self.timeout,
        }

    def encode(self) -> bytes:
        return _encode(self.to_json())

    @classmethod
    def parse(cls, payload: bytes) -> GattRequest:
        """For the integration side and tests; GattMessageError if it breaks the schema."""
        document = _object(payload, MAX_RESULT_BYTES * 2)
        data = document.get("data")
        if not isinstance(data, str) or not _HEX.match(data):
            raise GattMessageError("data is lower-case hex")
        timeout = document.get("timeout", DEFAULT_TIMEOUT)
        response = document.get("response", True)
        if not isinstance(timeout, int | float) or isinstance(timeout, bool):
            raise GattMessageError("timeout is a number")
        if not isinstance(response, bool):
            raise GattMessageError("response is a boolean")
        return cls(
            _text(document, "id"),
            _text(document, "address"),
            _text(document, "service"),
            _text(document, "characteristic"),
            bytes.fromhex(data),
            float(timeout),
            response,
        )


@dataclass(frozen=True, slots=True)
class GattResult:
    """The end of one request: ``ok``, or ``error`` with an optional human-readable detail."""

    id: str
    ok: bool
    error: GattError | None = None
    detail: str | None = None

    def __post_init__(self) -> None:
        if not _ID.match(self.id):
            raise GattMessageError("id is 32 lower-case hex digits")
        if self.ok != (self.error is None):
            raise GattMessageError("a result has an error exactly when it is not ok")
        if self.detail is not None and not 1 <= len(self.detail) <= MAX_DETAIL:
            raise GattMessageError(f"detail is 1-{MAX_DETAIL} characters")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"api": API_VERSION, "id": self.id, "ok": self.ok}
        if self.error is not None:
            out["error"] = self.error.value
        if self.detail is not None:
            out["detail"] = self.detail
        return out

    def encode(self) -> bytes:
        return _encode(self.to_json())

    @classmethod
    def parse(cls, payload: bytes) -> GattResult:
        document = _object(payload, MAX_RESULT_BYTES)
        ok = document.get("ok")
        if not isinstance(ok, bool):
            raise GattMessageError("ok is a boolean")
        error = document.get("error")
        try:
            reason = None if error is None else GattError(error)
        except ValueError:
            raise GattMessageError("unknown error") from None
        detail = document.get("detail")
        if detail is not None and not isinstance(detail, str):
            raise GattMessageError("detail is a string")
        return cls(_text(document, "id"), ok, reason, detail)


def _encode(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def _object(payload: bytes, limit: int) -> dict[str, Any]:
    if len(payload) > limit:
        raise GattMessageError("too large")
    try:
        document = json.loads(payload)
    except (ValueError, RecursionError):
        raise GattMessageError("not JSON") from None
    if not isinstance(document, dict) or document.get("api") != API_VERSION:
        raise GattMessageError("not an api 1 object")
    return document


def _text(document: dict[str, Any], key: str) -> str:
    value = document.get(key)
    if not isinstance(value, str):
        raise GattMessageError(f"{key} is a string")
    return value


ResultCallback = Callable[[GattResult], None]
Publish = Callable[[str, bytes], None]


@dataclass(slots=True)
class _Pending:
    request: GattRequest
    deadline: float
    on_result: ResultCallback


class GattRequests:
    """Pending GATT writes by correlation id, each ended exactly once (result or timeout)."""

    def __init__(self, gateway_id: str, publish: Publish, *, max_pending: int = MAX_PENDING):
        self.request_topic = request_topic(gateway_id)
        self.result_topic = result_topic(gateway_id)
        self._publish = publish
        self._max_pending = max_pending
        self._pending: dict[str, _Pending] = {}
        self.dropped: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._pending)

    def submit(
        self,
        address: str,
        service: str,
        characteristic: str,
        data: bytes,
        *,
        now: float,
        on_result: ResultCallback,
        timeout: float = DEFAULT_TIMEOUT,
        response: bool = True,
    ) -> GattRequest:
        """Publish a write request; ``on_result`` gets its result or a timeout later.

        GattMessageError for an invalid request; OverflowError when too many are pending
        (the caller tells its user to retry rather than queueing without bound).
        """
        if len(self._pending) >= self._max_pending:
            raise OverflowError(f"{self._max_pending} GATT requests pending already")
        request = GattRequest(
            os.urandom(16).hex(),
            normalise_mac(address),
            service,
            characteristic,
            data,
            timeout,
            response,
        )
        self._pending[request.id] = _Pending(request, now + timeout + RESULT_GRACE, on_result)
        self._publish(self.request_topic, request.encode())
        return request

    def handle_message(self, topic: str, payload: bytes, retained: bool) -> None:
        """The MQTT handler for ``result_topic``; unknown, late or bad results are counted."""
        if topic != self.result_topic or retained:
            self.dropped["gatt_result_wrong_topic_or_retained"] += 1
            return
        try:
            result = GattResult.parse(payload)
        except GattMessageError:
            self.dropped["gatt_result_malformed"] += 1
            return
        pending = self._pending.pop(result.id, None)
        if pending is None:
            self.dropped["gatt_result_unknown_id"] += 1  # late (timed out) or never asked
            return
        pending.on_result(result)

    def next_deadline(self) -> float | None:
        if not self._pending:
            return None
        return min(p.deadline for p in self._pending.values())

    def expire(self, now: float) -> list[GattResult]:
        """End every request whose deadline passed with a ``timeout`` result."""
        due = [rid for rid, p in self._pending.items() if p.deadline <= now]
        results = []
        for rid in due:
            pending = self._pending.pop(rid)
            result = GattResult(rid, False, GattError.TIMEOUT)
            pending.on_result(result)
            results.append(result)
        return results
