"""Any River anomaly detector named by a rule (``detector: {river: anomaly.X, params: {...}}``), and the
signed pickles its checkpoints are.

A River detector's state is River's own objects, with no plain form Vigil knows, so its checkpoint is a
pickle — and a pickle read from Kafka would let anyone who can write the changelog run code on the workers.
So it is signed: HMAC-SHA256 with the key in ``detection.checkpoint_key_file``, checked in constant time
(``hmac.compare_digest``) *before* anything is unpickled; an unsigned or badly signed one is refused (the
bank then starts the key fresh, as for a damaged checkpoint). The bank's header already refuses another
River version (River pickles load only under the version that wrote them).

The detector is fed ``{"x": value}`` with the value scaled online to [0, 1] by the range the series has
shown so far (detectors such as HalfSpaceTrees need it; it does no harm to the others), and its score
``s`` becomes the raw score ``s / (1 + s)`` (River's scores are ≥ 0 of any scale; this keeps the order and
lands in [0, 1)). No band: events carry ``expected: null``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import importlib
import math
import pickle
from collections.abc import Hashable
from functools import lru_cache
from pathlib import Path
from typing import Any, Final

from river import base

from engine.config import Direction
from engine.detectors import _FLOAT_NOISE_ABS, _FLOAT_NOISE_REL, check_finite

__all__ = ["RiverByName", "read_key", "river_class", "sign", "unsign"]

MIN_KEY_BYTES: Final = 32
_TAG: Final = b"VGLPKL1"


def river_class(path: str) -> type[base.AnomalyDetector]:
    """The River class at ``path`` (``anomaly.HalfSpaceTrees`` → ``river.anomaly.HalfSpaceTrees``)."""
    module_name, _, name = path.rpartition(".")
    try:
        module = importlib.import_module(f"river.{module_name}")
    except ImportError:
        raise ValueError(f"river.{module_name} is not a River module") from None
    cls = getattr(module, name, None)
    if not isinstance(cls, type) or not issubclass(cls, base.AnomalyDetector):
        raise ValueError(f"river.{path} is not a River anomaly detector")
    return cls


@lru_cache(maxsize=8)
def read_key(path: Path) -> bytes:
    """The HMAC key in ``path`` (surrounding whitespace stripped); a clear error, never the key itself."""
    try:
        key = path.read_bytes().strip()
    except OSError as exc:
        raise ValueError(f"detection.checkpoint_key_file {path} cannot be read: {exc.strerror}") from None
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"detection.checkpoint_key_file {path} holds fewer than {MIN_KEY_BYTES} bytes")
    return key


def sign(key: bytes, payload: bytes) -> str:
    """``payload`` with its HMAC-SHA256 under ``key``, as one ASCII string (plain state)."""
    mac = hmac.new(key, _TAG + payload, hashlib.sha256).digest()
    return base64.b64encode(_TAG + mac + payload).decode("ascii")


def unsign(key: bytes, signed: str) -> bytes:
    """The payload of :func:`sign`'s output; ``ValueError`` when it is unsigned or badly signed."""
    try:
        blob = base64.b64decode(signed.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        raise ValueError("River checkpoint is not signed (not a signed payload)") from None
    if not blob.startswith(_TAG) or len(blob) < len(_TAG) + 32:
        raise ValueError("River checkpoint is not signed")
    mac, payload = blob[len(_TAG) : len(_TAG) + 32], blob[len(_TAG) + 32 :]
    expected = hmac.new(key, _TAG + payload, hashlib.sha256).digest()
    if not hmac.compare_digest(mac, expected):
        raise ValueError("River checkpoint is badly signed (another key, or altered)")
    return payload


class RiverByName(base.AnomalyDetector):
    """A River anomaly detector by name, scaled input, signed-pickle state (see the module docstring)."""

    sigma_score = False
    _plain_properties = ("signed_model",)

    def __init__(
        self,
        river: str = "anomaly.HalfSpaceTrees",
        params: dict[str, Any] | None = None,
        direction: Direction = Direction.BOTH,
        key_file: Path | None = None,
        half_life: float = 30.0,
    ) -> None:
        self.river = river
        self.params = dict(params or {})
        self.direction = Direction(direction)
        # Held in tuples, which plain state neither writes nor lets a checkpoint replace: a checkpoint must
        # never choose the key that verifies it, nor put an object of its own in place of the model.
        self._key_source: tuple[Path | None] = (key_file,)
        self.half_life = float(half_life)
        self._alpha = 1.0 - 0.5 ** (1.0 / self.half_life)
        self._sign = {Direction.HIGHER: 1.0, Direction.LOWER: -1.0, Direction.BOTH: 0.0}[self.direction]
        self._model: tuple[base.AnomalyDetector] = (river_class(river)(**self.params),)
        self.n = 0
        self._level = 0.0
        self._low = 0.0
        self._high = 0.0

    def learn_one(self, x: dict[Hashable, Any]) -> None:
        self.learn_value(x["x"])

    def score_one(self, x: dict[Hashable, Any]) -> float:
        return self.score_value(x["x"])

    def _scaled(self, x: float) -> dict[Hashable, Any]:
        low, high = self._low, self._high
        span = max(high - low, _FLOAT_NOISE_REL * max(abs(low), abs(high)) + _FLOAT_NOISE_ABS)
        return {"x": min(max((x - low) / span, 0.0), 1.0)}

    def score_value(self, x: float, ts_ms: int | None = None) -> float:
        x = check_finite(x)
        if self.n == 0:
            return 0.0
        if self._sign != 0.0 and self._sign * (x - self._level) <= 0.0:
            return 0.0
        s = float(self._model[0].score_one(self._scaled(x)))
        if not math.isfinite(s) or s <= 0.0:
            return 1.0 if s == math.inf else 0.0
        return s / (1.0 + s)

    def learn_value(self, x: float, w: float = 1.0, ts_ms: int | None = None) -> None:
        x = check_finite(x)
        if not 0.0 <= w <= 1.0:
            raise ValueError(f"weight must be in [0, 1], got {w!r}")
        self.n += 1
        if self.n == 1:
            self._level = self._low = self._high = x
        else:
            self._level += max(self._alpha, 1.0 / self.n) * w * (x - self._level)
            self._low, self._high = min(self._low, x), max(self._high, x)
        if w > 0.0:
            self._model[0].learn_one(self._scaled(x))

    def level_at(self, ts_ms: int | None = None) -> float:
        return self._level

    def expected_range(self, ts_ms: int | None = None) -> tuple[float, float]:
        return (-math.inf, math.inf)

    @property
    def key_file(self) -> Path | None:
        """The key file from config (a property: River's ``clone`` reads it; plain state does not)."""
        return self._key_source[0]

    def _key(self) -> bytes:
        key_file = self._key_source[0]
        if key_file is None:
            raise ValueError("River detectors need detection.checkpoint_key_file to checkpoint")
        return read_key(key_file)

    @property
    def signed_model(self) -> str:
        """The River model, pickled and signed (plain state: one string)."""
        return sign(self._key(), pickle.dumps(self._model[0], protocol=pickle.HIGHEST_PROTOCOL))

    @signed_model.setter
    def signed_model(self, signed: str) -> None:
        payload = unsign(self._key(), signed)  # raises before anything is unpickled
        model = pickle.loads(payload)  # signed with our key, checked above
        if type(model) is not type(self._model[0]):
            raise ValueError(f"River checkpoint holds a {type(model).__name__}, not the configured class")
        self._model = (model,)

    @classmethod
    def _unit_test_params(cls) -> Any:  # River's estimator checks
        yield {"river": "anomaly.HalfSpaceTrees", "params": {"n_trees": 3, "height": 3, "seed": 1}}
