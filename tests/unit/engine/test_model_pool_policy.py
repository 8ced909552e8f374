"""What a request may load: names not paths, --allow-models, a bounded Hub, no rebinding, bounds.

The real ModelResolver runs here (models_dir on disk, a recording fake Hub), with fake backends.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path

import pytest

from embedserve.backends.fake import FakeBackend
from embedserve.engine import model_pool as pool_module
from embedserve.engine.model_pool import ModelPool
from embedserve.errors import HubTimeout, ModelNotFound, ModelTooLarge, NotReady
from embedserve.models import hub
from embedserve.models.registry import ModelResolver
from embedserve.settings import Settings


class FakeHub:
    """Records every Hub lookup; answers with a folder for `known` ids, else not found; can stall."""

    def __init__(self, root: Path, known: tuple[str, ...] = (), stall: float = 0.0):
        self.root, self.known, self.stall = root, set(known), stall
        self.calls: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, repo_id, *, revision=None):
        with self.lock:
            self.calls.append(repo_id)
        if self.stall:
            time.sleep(self.stall)
        if repo_id not in self.known:
            raise hub.HubModelNotFound(f"{repo_id} not in the cache at /secret/hf-cache", public=f"{repo_id} not found")
        folder = self.root / "hub" / repo_id.replace("/", "--")
        folder.mkdir(parents=True, exist_ok=True)
        return folder


class Factory:
    def __init__(self):
        self.paths: list[Path] = []

    def __call__(self, path: Path) -> FakeBackend:
        self.paths.append(path)
        return FakeBackend()


@pytest.fixture
def models_dir(tmp_path):
    root = tmp_path / "models"
    for name in ("local-model", "org--dir-model", "all-MiniLM-L6-v2-copy"):
        (root / name).mkdir(parents=True)
    return root


def make(tmp_path, models_dir=None, fake_hub=None, **overrides):
    settings = Settings(**{"models": ("org/start",), "models_dir": models_dir, "graceful_timeout": 1.0} | overrides)
    fake_hub = fake_hub or FakeHub(tmp_path)
    resolver = ModelResolver(models_dir=models_dir, hub_download=fake_hub)
    factory = Factory()
    return ModelPool(settings, factory, resolver=resolver), factory, fake_hub


# ---- names, not paths -------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["/etc", "/tmp", "../models/local-model", "models/../models/local-model", "./local-model", "~", "~nosuchuser",
     "~root/x", "a/b/c/d", "x" * 300, "a/" + "b" * 300, "bad\x00name", "\ud800", "local-model/", "C:\\models\\x",
     "org/name.git", "org--name", "..", "."],
)
async def test_a_request_can_never_name_a_path(tmp_path, models_dir, name, monkeypatch):
    monkeypatch.chdir(models_dir)  # relative names must not resolve against the working directory
    pool, factory, fake_hub = make(tmp_path, models_dir)
    with pytest.raises(ModelNotFound) as info:
        await pool.get_or_load(name)
    assert info.value.status == 404
    assert str(models_dir) not in info.value.message and str(tmp_path) not in info.value.message
    assert factory.paths == [] and fake_hub.calls == []  # neither the disk's models nor the Hub
    await pool.close()


async def test_an_existing_and_a_missing_folder_answer_alike(tmp_path, models_dir):
    pool, factory, _ = make(tmp_path, models_dir)
    answers = []
    for name in (str(models_dir / "local-model"), str(models_dir / "no-such-folder"), "/etc", "/no-such-dir"):
        with pytest.raises(ModelNotFound) as info:
            await pool.get_or_load(name)
        answers.append(info.value.message)
        assert name not in info.value.message  # a path is never quoted back
    assert len(set(answers)) == 1, answers  # no filesystem oracle: one answer for all four
    assert factory.paths == []
    await pool.close()


async def test_names_under_models_dir_and_packages_load_by_name(tmp_path, models_dir):
    pool, factory, fake_hub = make(tmp_path, models_dir)
    local = await pool.get_or_load("local-model")
    assert local.path == (models_dir / "local-model").resolve() and local.source == "models_dir"
    org = await pool.get_or_load("org/dir-model")
    assert org.path == (models_dir / "org--dir-model").resolve()
    assert fake_hub.calls == []
    await pool.close()


async def test_allow_request_paths_lets_requests_name_folders_and_one_folder_is_one_model(tmp_path, models_dir):
    pool, factory, _ = make(tmp_path, models_dir, allow_request_paths=True)
    folder = models_dir / "local-model"
    first = await pool.get_or_load(str(folder))
    for spelling in (f"{folder}/", f"{folder}/.", f"{models_dir}/../models/local-model", f"{folder}//"):
        assert await pool.get_or_load(spelling) is first
    assert await pool.get_or_load("local-model") is first  # and by its models_dir name
    assert factory.paths == [folder.resolve()]
    with pytest.raises(ModelNotFound):
        await pool.get_or_load(str(tmp_path / "nothing-here"))
    await pool.close()


# ---- the Hub: only what --allow-models allows, and never for long -----------------------


async def test_the_hub_is_asked_only_for_ids_matching_allow_models(tmp_path):
    fake_hub = FakeHub(tmp_path, known=("BAAI/bge-small", "evil/model"))
    pool, factory, _ = make(tmp_path, fake_hub=fake_hub, allow_models=("sentence-transformers/*,BAAI/*",))
    model = await pool.get_or_load("BAAI/bge-small")
    assert model.source == "hub"
    with pytest.raises(ModelNotFound) as info:
        await pool.get_or_load("evil/model")
    assert "does not load it from the Hugging Face Hub" in info.value.message
    assert fake_hub.calls == ["BAAI/bge-small"]
    await pool.close()


async def test_no_load_on_demand_never_asks_the_hub(tmp_path):
    fake_hub = FakeHub(tmp_path, known=("org/x",))
    pool, _, _ = make(tmp_path, fake_hub=fake_hub, load_on_demand=False)
    with pytest.raises(ModelNotFound):
        await pool.get_or_load("org/x")
    assert fake_hub.calls == []
    await pool.close()


async def test_a_hub_miss_is_404_without_server_paths(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    pool, _, _ = make(tmp_path)
    with pytest.raises(ModelNotFound) as info:
        await pool.get_or_load("org/missing")
    assert info.value.message == "model 'org/missing' could not be found: org/missing not found"
    assert "/secret/hf-cache" in caplog.text  # the operator still sees where it looked
    await pool.close()


async def test_a_stalled_hub_times_out_on_its_own_threads(tmp_path):
    fake_hub = FakeHub(tmp_path, stall=1.5)
    pool, _, _ = make(tmp_path, fake_hub=fake_hub, hub_timeout=0.3)
    started = time.perf_counter()
    results = await asyncio.gather(*(pool.get_or_load(f"org/stalled-{i}") for i in range(8)), return_exceptions=True)
    assert time.perf_counter() - started < 1.0  # each waited --hub-timeout, not 1.5 s (or 8 x 1.5 s)
    assert all(isinstance(r, HubTimeout) for r in results), results
    assert results[0].status == 504 and "within 0.3 s" in results[0].message
    # the default thread pool, which requests tokenize on, stayed free all along
    assert await asyncio.wait_for(asyncio.to_thread(lambda: "free"), timeout=0.2) == "free"
    assert len(fake_hub.calls) <= pool_module.RESOLVER_THREADS  # the rest never reached the Hub
    await pool.close()


# ---- no rebinding of names ------------------------------------------------------------------


async def test_a_request_cannot_take_a_start_up_model_s_names_even_after_it_was_unloaded(tmp_path):
    fake_hub = FakeHub(tmp_path, known=("impostor/all-MiniLM-L6-v2",))
    pool, factory, _ = make(tmp_path, fake_hub=fake_hub)
    await pool.load_all(["sentence-transformers/all-MiniLM-L6-v2"])  # the package: the real one
    real = pool.get("all-MiniLM-L6-v2")
    await pool.unload("all-MiniLM-L6-v2")
    impostor = await pool.get_or_load("impostor/all-MiniLM-L6-v2")
    assert impostor.id == "impostor/all-MiniLM-L6-v2"
    assert "all-MiniLM-L6-v2" not in impostor.aliases  # the short name stays the start-up model's
    with pytest.raises(NotReady, match="was unloaded"):
        pool.get("all-MiniLM-L6-v2")
    again = await pool.get_or_load("all-mini" "lm-l6-v2")  # any spelling means the real model
    assert again.id == real.id and again.path == real.path and again.startup
    assert pool.get("all-MiniLM-L6-v2") is again
    await pool.close()


async def test_a_request_loaded_model_does_not_take_an_alias_another_model_holds(tmp_path):
    fake_hub = FakeHub(tmp_path, known=("a/shared-name", "b/shared-name"))
    pool, _, _ = make(tmp_path, fake_hub=fake_hub)
    first = await pool.get_or_load("a/shared-name")
    second = await pool.get_or_load("b/shared-name")
    assert "shared-name" in first.aliases and "shared-name" not in second.aliases
    assert pool.get("shared-name") is first
    await pool.close()


# ---- bounds ------------------------------------------------------------------------------------


async def test_request_loaded_models_are_capped_and_start_up_models_never_evicted(tmp_path, models_dir):
    for i in range(6):
        (models_dir / f"m{i}").mkdir()
    pool, _, _ = make(tmp_path, models_dir, max_loaded_models=2)
    await pool.load_all(["local-model"])
    for i in range(6):
        await pool.get_or_load(f"m{i}")
    assert [m.id for m in pool.models] == ["local-model", "m4", "m5"]
    assert pool.models[0].startup and not pool.models[1].startup
    await pool.close()


async def test_default_cap_is_four_request_loaded_models(tmp_path, models_dir):
    for i in range(6):
        (models_dir / f"m{i}").mkdir()
    pool, _, _ = make(tmp_path, models_dir)
    for i in range(6):
        await pool.get_or_load(f"m{i}")
    assert len(pool.models) == 4
    await pool.close()


async def test_a_model_whose_weights_exceed_the_memory_ceiling_is_refused_before_loading(tmp_path, models_dir):
    (models_dir / "big").mkdir()
    (models_dir / "big" / "model.safetensors").write_bytes(b"\0" * (3 << 20))
    pool, factory, _ = make(tmp_path, models_dir, max_models_memory_mib=2)
    with pytest.raises(ModelTooLarge) as info:
        await pool.get_or_load("big")
    assert info.value.status == 507 and "3 MiB" in info.value.message and "2 MiB" in info.value.message
    assert factory.paths == []
    await pool.close()


async def test_the_memory_ceiling_evicts_least_recently_used_request_models(tmp_path, models_dir, monkeypatch):
    for name in ("m1", "m2", "m3"):
        (models_dir / name).mkdir()
    rss = iter(range(0, 10_000 << 20, 1 << 20))  # every load grows resident memory by 1 MiB... per call
    monkeypatch.setattr(pool_module, "resident_bytes", lambda: next(rss) * 2)  # -> 2 MiB per model
    pool, _, _ = make(tmp_path, models_dir, max_models_memory_mib=5, max_loaded_models=0)
    for name in ("m1", "m2", "m3"):
        await pool.get_or_load(name)
    assert [m.memory_bytes for m in pool.models] == [2 << 20] * 2
    assert [m.id for m in pool.models] == ["m2", "m3"]  # 6 MiB > 5: the least recently used went
    await pool.close()


def test_the_default_memory_ceiling_is_half_of_what_the_process_may_use(monkeypatch):
    monkeypatch.setattr(pool_module, "usable_memory_bytes", lambda: 8 << 30)
    assert pool_module.memory_limit(Settings()) == 4 << 30
    assert pool_module.memory_limit(Settings(max_models_memory_mib=100)) == 100 << 20
