"""CLI: .env loading (HF_TOKEN for gated models) and the models listing."""

from pathlib import Path

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
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    result = CliRunner().invoke(app, ["models"])
    assert result.exit_code == 0, result.output
    assert "sentence-transformers/all-MiniLM-L6-v2" in result.output
    assert "installed at" in result.output


def test_serve_rejects_bad_flag_values():
    result = CliRunner().invoke(app, ["serve", "--max-queue", "0"])
    assert result.exit_code != 0
    assert "max_queue" in result.output


def test_version():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and "embedserve" in result.output


def test_models_dir_contents_are_listed(tmp_path, monkeypatch):
    (tmp_path / "my-model").mkdir()
    monkeypatch.setenv("EMBEDSERVE_MODELS_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    result = CliRunner().invoke(app, ["models"])
    assert result.exit_code == 0 and "my-model" in result.output
    assert Path(tmp_path / "my-model").is_dir()


def test_env_file_values_do_not_outlive_their_test():
    import os

    assert os.environ.get("HF_TOKEN") != "hf_from_dotenv"
    assert os.environ.get("EMBEDSERVE_MAX_QUEUE") != "5"
