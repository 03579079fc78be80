"""The daemon loads what the settings name, in every command that builds one; its start-up can fail
half-way and still shut down cleanly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

from streamgenre.config import Settings
from streamgenre.model.contract import GenreModel, ModelError
from streamgenre.model.similarity import CatalogError, build_catalog
from streamgenre.stream.daemon import Daemon
from tests.audio import tone_mix
from tests.modelgen import make_test_model

NO_BROKER = "127.0.0.1:1"  # start-up fails before it would connect


@pytest.fixture(scope="module")
def foreign_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A catalogue built with another model than the test model: the daemon must refuse it."""
    directory = tmp_path_factory.mktemp("foreign")
    sf.write(directory / "track.wav", tone_mix(2.0, 16000, 1, seed=1), 16000)
    other = make_test_model(directory / "other", seed=7)
    build_catalog([directory / "track.wav"], GenreModel(other), directory / "catalog", progress=False)
    return directory / "catalog"


def test_daemon_loads_the_catalogue_the_settings_name(test_model: Path, foreign_catalog: Path) -> None:
    daemon = Daemon(Settings(model_path=test_model, catalog_path=foreign_catalog, bootstrap_servers=NO_BROKER))
    with pytest.raises(CatalogError, match="model mismatch"):
        daemon.startup()
    daemon.shutdown()  # after a start-up that stopped half-way: releases what exists, nothing else


def test_daemon_reports_a_missing_catalogue(test_model: Path, tmp_path: Path) -> None:
    daemon = Daemon(Settings(model_path=test_model, catalog_path=tmp_path / "none", bootstrap_servers=NO_BROKER))
    with pytest.raises(CatalogError, match="catalogue not found"):
        daemon.startup()


def test_shutdown_after_a_failed_model_load_does_not_raise(tmp_path: Path) -> None:
    daemon = Daemon(Settings(model_path=tmp_path / "missing.onnx", bootstrap_servers=NO_BROKER))
    with pytest.raises(ModelError, match="model not found"):
        daemon.startup()
    daemon.shutdown()
    assert daemon.model is None and daemon.source is None and daemon.http is None


@pytest.mark.integration
def test_demo_honours_the_catalogue_setting(test_model: Path, foreign_catalog: Path, tmp_path: Path) -> None:
    """``streamgenre demo`` builds its own Daemon: it used to run without the catalogue set here."""
    sf.write(tmp_path / "clip.wav", tone_mix(2.0, 16000, 1, seed=3), 16000)
    env = {**os.environ, "STREAMGENRE_MODEL_PATH": str(test_model), "STREAMGENRE_CATALOG_PATH": str(foreign_catalog)}
    result = subprocess.run([sys.executable, "-m", "streamgenre", "demo", "--speed", "0", str(tmp_path / "clip.wav")],
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode != 0
    assert "model mismatch: the catalogue was built with model version" in result.stderr
