"""River detectors by name (``detector: {river: ..., params: ...}``): configuration, signed pickles."""

from __future__ import annotations

import base64
import hashlib
import os
import pickle
import random
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine import plain
from engine.bank import ModelBank
from engine.config import load_config
from engine.errors import ConfigError
from engine.river_detector import RiverByName, read_key, sign, unsign
from engine.samples import Series, sample_key

T0 = 1_700_000_000_000
KEY = b"0123456789abcdef0123456789abcdef-secret"
RIVER = {
    "river": "anomaly.HalfSpaceTrees",
    "params": {"n_trees": 5, "height": 5, "window_size": 50, "seed": 2},
}


def write_config(tmp_path: Path, detector: Any, key: bytes | None = KEY) -> Path:
    doc: dict[str, Any] = {"rules": [{"match": ".*", "detector": detector}], "detection": {}}
    if key is not None:
        (tmp_path / "key").write_bytes(key)
        doc["detection"]["checkpoint_key_file"] = str(tmp_path / "key")
    path = tmp_path / "vigil.yaml"
    path.write_text(orjson.dumps(doc).decode())  # JSON is YAML
    return path


def noisy(n: int, seed: int = 1) -> list[float]:
    rng = random.Random(seed)
    return [100.0 + rng.gauss(0, 3) for _ in range(n)]


@pytest.mark.parametrize(
    ("detector", "message"),
    [
        ({"river": "anomaly.NoSuchDetector"}, "not a River anomaly detector"),
        ({"river": "linear_model.LinearRegression"}, "not a River anomaly detector"),
        ({"river": "nosuchmodule.X"}, "not a River module"),
        ({"river": "os.system"}, "not a River module"),
        ({"river": "../../etc.passwd"}, "river"),
        ({"river": "anomaly.HalfSpaceTrees", "params": {"no_such_param": 1}}, "does not take params"),
        ({"river": "anomaly.HalfSpaceTrees", "params": {"n_trees": [1, 2]}}, "params"),
        ({"river": "anomaly.HalfSpaceTrees", "params": {"n_trees": {"$obj": {}}}}, "params"),
        ({"river": "a" * 300 + ".X"}, "river"),
    ],
)
def test_a_river_detector_that_cannot_be_built_is_a_configuration_error(
    tmp_path: Path, detector: Any, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write_config(tmp_path, detector))


@pytest.mark.parametrize(("key", "message"), [(None, "checkpoint_key_file"), (b"short", "fewer than 32")])
def test_a_river_detector_needs_a_key_file_of_enough_bytes(
    tmp_path: Path, key: bytes | None, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write_config(tmp_path, RIVER, key=key))


def test_a_missing_key_file_is_named_and_the_key_never_shown(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot be read") as missing:
        read_key(tmp_path / "absent")
    assert "absent" in str(missing.value)
    (tmp_path / "short").write_bytes(b"tiny-secret")
    with pytest.raises(ValueError, match="fewer than") as short:
        read_key(tmp_path / "short")
    assert "tiny-secret" not in str(short.value)


def bank_of(tmp_path: Path, table: dict[bytes, bytes] | None = None) -> ModelBank:
    config = load_config(write_config(tmp_path, RIVER))
    return ModelBank(config, load=(table or {}).get)


def feed(bank: ModelBank, values: list[float], start: int = 0) -> list[float]:
    out = []
    for i, x in enumerate(values, start=start):
        bank.observe(Series("svc", "m", "i", [(T0 + i * 60_000, x)]))
        out.append(bank.units[sample_key("svc", "m")].guards[("m", "i")].score)
    return out


def test_a_river_detector_checkpoints_as_a_signed_pickle_and_restores_to_the_same_scores(
    tmp_path: Path,
) -> None:
    bank = bank_of(tmp_path)
    feed(bank, noisy(400))
    table = dict(bank.checkpoints(lambda key: True))
    blob = table[sample_key("svc", "m")]
    assert KEY not in blob
    fresh = bank_of(tmp_path, table)
    fresh.unit(sample_key("svc", "m"))
    assert fresh.refused_checkpoints == 0
    rest = [*noisy(200, seed=3), 500.0, 100.0]
    assert feed(fresh, rest, start=400) == feed(bank, rest, start=400)


class Exploit:
    """A pickle that runs code when loaded: it must never be loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.marker),))


ZERO_MAC = b"VGLPKL1" + b"\x00" * 32


def tampered(tmp_path: Path, replace: Any) -> tuple[dict[bytes, bytes], Path]:
    """The bank's checkpoint with the signed model string replaced by ``replace(signed, marker)``."""
    bank = bank_of(tmp_path)
    feed(bank, noisy(300))
    table = dict(bank.checkpoints(lambda key: True))
    key = sample_key("svc", "m")
    blob = table[key]
    size = int.from_bytes(blob[8:12], "big")
    header, body = blob[: 12 + size], orjson.loads(blob[12 + size :])
    state = body["guards"][0][2]["detector"]["$obj"]
    marker = tmp_path / "pwned"
    state["signed_model"] = replace(state["signed_model"], marker)
    head = orjson.loads(blob[12 : 12 + size])
    new_body = orjson.dumps(body)
    head["id"] = hashlib.sha256(new_body).hexdigest()[:16]
    raw_head = orjson.dumps(head)
    table[key] = header[:8] + len(raw_head).to_bytes(4, "big") + raw_head + new_body
    return table, marker


@pytest.mark.parametrize(
    "replace",
    [
        lambda signed, marker: base64.b64encode(pickle.dumps(Exploit(marker))).decode(),  # unsigned
        lambda signed, marker: sign(b"another key of at least 32 bytes!!", pickle.dumps(Exploit(marker))),
        lambda signed, marker: (
            signed[:-8] + ("A" * 8 if not signed.endswith("A" * 8) else "B" * 8)
        ),  # altered
        lambda signed, marker: base64.b64encode(
            b"VGLPKL1" + b"\x00" * 32 + pickle.dumps(Exploit(marker))
        ).decode(),
        lambda signed, marker: "not base64 at all \u00e9",
        lambda signed, marker: "",
    ],
    ids=["unsigned", "other-key", "altered", "zero-mac", "garbage", "empty"],
)
def test_unsigned_or_badly_signed_pickles_are_refused_without_being_unpickled(
    tmp_path: Path, replace: Any, caplog: pytest.LogCaptureFixture
) -> None:
    table, marker = tampered(tmp_path, replace)
    fresh = bank_of(tmp_path, table)
    fresh.unit(sample_key("svc", "m"))
    assert not marker.exists()  # the pickle's code never ran
    assert fresh.refused_checkpoints == 1  # the key starts fresh
    assert fresh.units[sample_key("svc", "m")].guards == {}
    assert KEY.decode() not in caplog.text


def test_a_checkpoint_cannot_choose_the_key_that_verifies_it(tmp_path: Path) -> None:
    bank = bank_of(tmp_path)
    feed(bank, noisy(100))
    detector = bank.units[sample_key("svc", "m")].guards[("m", "i")].detector
    assert isinstance(detector, RiverByName)
    state = plain.dump(detector)
    assert "key_file" not in state
    assert "_key_source" not in state
    assert "_model" not in state
    other = tmp_path / "attacker-key"
    other.write_bytes(b"x" * 40)
    for crafted in ({"key_file": str(other)}, {"_key_source": str(other)}, {"_model": {"$obj": {}}}):
        with pytest.raises(ValueError, match=r"expected|not an object"):
            plain.apply(RiverByName(**detector._get_params()), crafted)


def test_sign_and_unsign_are_inverse_and_need_the_same_key() -> None:
    signed = sign(KEY, b"payload")
    assert unsign(KEY, signed) == b"payload"
    with pytest.raises(ValueError, match="badly signed"):
        unsign(KEY + b"!", signed)
