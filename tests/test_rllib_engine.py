"""``--engine rllib`` without Ray installed: one line that says how to install it (runs without Ray)."""

from __future__ import annotations

import argparse
import importlib.util

import pytest

from kudos.errors import KudosError
from kudos.rl.experiment import load_config
from kudos.integrations import RAY_INSTALL, require_ray
from kudos.commands.rllib import add_engine_arguments, run_engine


@pytest.fixture
def no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--resume")
    add_engine_arguments(parser)
    return parser.parse_args(list(argv))


def test_rllib_engine_without_ray_is_one_line_with_the_install_command(no_ray: None) -> None:
    with pytest.raises(KudosError) as info:
        run_engine(_args("--engine", "rllib"), load_config(None, []))
    message = str(info.value)
    assert RAY_INSTALL in message and "pip install 'kudos[ray]'" in message and "\n" not in message
    with pytest.raises(KudosError):
        require_ray()


def test_kudos_engine_is_left_to_the_native_trainer(no_ray: None) -> None:
    assert run_engine(_args(), load_config(None, [])) is None
    assert _args().engine == "kudos" and _args().env_runners == 2


def test_kudos_train_engine_rllib_without_ray(no_ray: None, tmp_path: object, capsys: pytest.CaptureFixture[str]) -> None:
    from kudos.commands.main import main

    assert main(["train", "--engine", "rllib", "--reward", "none", "--steps", "10", "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"kudos: error: the rllib engine needs Ray RLlib, which is not installed: {RAY_INSTALL}"
