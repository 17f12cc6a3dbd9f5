"""The per-user cache follows $KUDOS_CACHE_DIR, then $XDG_CACHE_HOME, then ~/.cache."""

from pathlib import Path

from kudos.feedback.model_files import default_cache_dir
from kudos.feedback.store import default_store_path
from kudos.paths import cache_dir


def test_the_cache_follows_kudos_then_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.delenv("KUDOS_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "kudos"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # invalid per the XDG spec: ignored
    assert cache_dir() == tmp_path / "home" / ".cache" / "kudos"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "kudos"
    # Both per-user files live there: the embedded model and the shared label store.
    assert default_cache_dir() == tmp_path / "xdg" / "kudos" / "models"
    assert Path(default_store_path()) == tmp_path / "xdg" / "kudos" / "labels.sqlite"
    monkeypatch.setenv("KUDOS_CACHE_DIR", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"
