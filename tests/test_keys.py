"""Master key handling: environment or 0600 key file, clear refusals that never echo the key, demo key."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from pipelines.orchestration.resources import PseudonymisationKeyResource
from pipelines.orchestration.settings import KEY_ENV, VERSION_ENV, load_master_key
from pipelines.pseudo.keys import PseudonymisationKeyError, derive_domain_key, ensure_demo_key

HEX_KEY = "5f" * 32


@pytest.fixture(autouse=True)
def _no_key_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.delenv(VERSION_ENV, raising=False)


def _key_file(tmp_path: Path, content: str, mode: int) -> Path:
    path = tmp_path / "pseudonymisation.key"
    path.write_text(content)
    path.chmod(mode)
    return path


def test_environment_key_wins_over_key_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _key_file(tmp_path, "ab" * 32, 0o600)
    monkeypatch.setenv(KEY_ENV, HEX_KEY)
    assert load_master_key(path) == bytes.fromhex(HEX_KEY)


def test_key_file_with_owner_only_rights_is_read(tmp_path: Path) -> None:
    path = _key_file(tmp_path, HEX_KEY + "\n", 0o600)
    assert load_master_key(path) == bytes.fromhex(HEX_KEY)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_key_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = _key_file(tmp_path, HEX_KEY, mode)
    with pytest.raises(PseudonymisationKeyError, match="chmod 600") as err:
        load_master_key(path)
    assert HEX_KEY not in str(err.value)


def test_missing_key_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PseudonymisationKeyError, match=r"does not exist.*make demo"):
        load_master_key(tmp_path / "absent.key")


@pytest.mark.parametrize("bad", ["not-hex-at-all-" * 4, "abcd", "5f" * 31 + "zz"])
def test_malformed_key_is_refused_without_echoing_it(bad: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, bad)
    with pytest.raises(PseudonymisationKeyError, match=KEY_ENV) as err:
        load_master_key()
    assert bad not in str(err.value)


def test_demo_key_is_created_once_with_0600(tmp_path: Path) -> None:
    path = ensure_demo_key(tmp_path / ".secrets" / "pseudonymisation.key")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first = load_master_key(path)
    assert len(first) == 32
    ensure_demo_key(path)
    assert load_master_key(path) == first


def test_demo_key_refuses_an_existing_exposed_file(tmp_path: Path) -> None:
    path = _key_file(tmp_path, HEX_KEY, 0o644)
    with pytest.raises(PseudonymisationKeyError):
        ensure_demo_key(path)


def test_resource_derives_domain_keys_at_the_configured_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _key_file(tmp_path, HEX_KEY, 0o600)
    master = bytes.fromhex(HEX_KEY)
    resource = PseudonymisationKeyResource(key_file=str(path))
    assert resource.key_version == 1
    assert resource.domain_keys(["statistics"]) == {"statistics": derive_domain_key(master, "statistics", 1)}
    monkeypatch.setenv(VERSION_ENV, "3")
    assert resource.key_version == 3
    pinned = PseudonymisationKeyResource(key_file=str(path), version=2)
    assert pinned.domain_keys(["marketing"])["marketing"] == derive_domain_key(master, "marketing", 2)
