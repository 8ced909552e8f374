"""Settings: env prefix, frozen, and every field is a CLI flag and a README row."""

from pathlib import Path

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from embedserve.cli import REPEATED_FLAG, app, build_settings
from embedserve.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_env_prefix_and_comma_lists(monkeypatch):
    monkeypatch.setenv("EMBEDSERVE_MODELS", "a-model, /some/folder")
    monkeypatch.setenv("EMBEDSERVE_MAX_QUEUE", "7")
    monkeypatch.setenv("EMBEDSERVE_TRUNCATE", "false")
    settings = Settings()
    assert settings.models == ("a-model", "/some/folder")
    assert settings.max_queue == 7 and settings.truncate is False


def test_flags_override_env(monkeypatch):
    monkeypatch.setenv("EMBEDSERVE_MAX_QUEUE", "7")
    settings = build_settings(max_queue=9, models=("x", "y"), truncate=None)
    assert settings.max_queue == 9 and settings.models == ("x", "y") and settings.truncate is True


def test_the_originals_variables_are_read_and_ours_win(monkeypatch):
    """PORT and API_KEY (the Flask server on Render), MODEL_NAME and API_TOKEN (the Embedding Service) work as they did."""
    for name in ("PORT", "MODEL_NAME", "DEFAULT_MODEL_NAME", "API_KEY", "API_TOKEN", "EMBEDSERVE_PORT",
                 "EMBEDSERVE_MODELS", "EMBEDSERVE_API_KEYS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PORT", "9000")
    monkeypatch.setenv("MODEL_NAME", "my-custom-model")
    monkeypatch.setenv("API_TOKEN", "sk-old")
    settings = Settings()
    assert settings.port == 9000 and settings.models == ("my-custom-model",)
    assert [key.get_secret_value() for key in settings.api_keys] == ["sk-old"]
    monkeypatch.setenv("DEFAULT_MODEL_NAME", "the-generator-one")  # the Embeddings Generator's: MODEL_NAME wins
    assert Settings().models == ("my-custom-model",)
    monkeypatch.delenv("MODEL_NAME")
    assert Settings().models == ("the-generator-one",)
    monkeypatch.setenv("API_KEY", "sk-flask")
    assert sorted(key.get_secret_value() for key in Settings().api_keys) == ["sk-flask", "sk-old"]
    monkeypatch.setenv("EMBEDSERVE_PORT", "9100")
    monkeypatch.setenv("EMBEDSERVE_MODELS", "ours")
    monkeypatch.setenv("EMBEDSERVE_API_KEYS", "sk-new")
    settings = Settings()
    assert settings.port == 9100 and settings.models == ("ours",)
    assert [key.get_secret_value() for key in settings.api_keys] == ["sk-new"]
    assert build_settings(port=9200).port == 9200  # and a flag beats both


def test_frozen():
    with pytest.raises(ValidationError):
        Settings().port = 1  # type: ignore[misc]


def test_invalid_values_are_refused():
    with pytest.raises(ValidationError):
        Settings(max_queue=0)
    with pytest.raises(ValidationError, match="shorter than --idle-timeout"):
        Settings(refusal_pause=0.5, idle_timeout=0.5)  # a held connection would be closed as idle


def test_every_setting_is_a_flag_and_a_readme_row():
    help_text = CliRunner().invoke(app, ["serve", "--help"], terminal_width=200).output
    readme = README.read_text()
    for name in Settings.model_fields:
        flag = "--" + REPEATED_FLAG.get(name, name.replace("_", "-"))
        assert flag in help_text, flag
        env = f"EMBEDSERVE_{name.upper()}"
        assert f"`{env}`" in readme, f"README lacks a row for {env}"
        assert f"`{flag}" in readme, f"README lacks the flag {flag}"
