from __future__ import annotations

from pathlib import Path

from edgeslm.config import resolve_settings


def test_flag_beats_environment_beats_default(tmp_path: Path) -> None:
    env = {"EDGESLM_HOME": str(tmp_path / "env"), "HF_ENDPOINT": "http://127.0.0.1:1/"}
    assert resolve_settings(home=tmp_path / "flag", env=env).home == tmp_path / "flag"
    assert resolve_settings(env=env).home == tmp_path / "env"
    assert resolve_settings(env=env).hf_endpoint == "http://127.0.0.1:1"
    default = resolve_settings(env={})
    assert default.home.name == "edgeslm" and default.hf_endpoint == "https://huggingface.co"
    assert not default.offline


def test_offline_from_environment_or_flag() -> None:
    assert resolve_settings(env={"EDGESLM_OFFLINE": "1"}).offline
    assert resolve_settings(env={"HF_HUB_OFFLINE": "true"}).offline
    assert not resolve_settings(env={"EDGESLM_OFFLINE": "1"}, offline=False).offline
    assert resolve_settings(env={}, offline=True).offline
