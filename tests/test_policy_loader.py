"""The generic policy-file loader refuses bad files naming the file, the key path, the line and the problem."""

from pathlib import Path

import pydantic
import pytest

from pipelines.policy.loader import PolicyError, load_policy_file


class _Retention(pydantic.BaseModel):
    archive: str


class _Purpose(pydantic.BaseModel):
    key: str
    retention: _Retention


class _File(pydantic.BaseModel):
    purposes: list[_Purpose]


def test_valid_file_is_parsed(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("purposes:\n  - key: a\n    retention: {archive: P1Y}\n")
    assert load_policy_file(path, _File).purposes[0].retention.archive == "P1Y"


def test_missing_key_names_file_key_path_and_line(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("purposes:\n  - key: a\n    retention: {archive: P1Y}\n  - key: b\n    retention:\n"
                    "      archve: P2Y\n")
    with pytest.raises(PolicyError) as err:
        load_policy_file(path, _File)
    assert err.value.key == "purposes[1].retention.archive"
    assert str(path) in str(err.value) and "Field required" in str(err.value)
    assert err.value.line == 6


def test_malformed_yaml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("purposes:\n  - key: a\n   bad: [\n")
    with pytest.raises(PolicyError, match="malformed YAML") as err:
        load_policy_file(path, _File)
    assert err.value.line == 3 and isinstance(err.value, ValueError)
