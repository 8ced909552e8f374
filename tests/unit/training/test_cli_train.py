"""`embedserve train`'s refusals, which need no training process (a real run: tests/integration)."""

from click.testing import CliRunner

from embedserve.cli import app
from embedserve.training.run import qlora_support


def _invoke(tmp_path, *extra):
    data = tmp_path / "pairs.tsv"
    if not data.exists():
        data.write_text("no tab\nstill none\n")
    return CliRunner().invoke(app, ["train", "--base", str(tmp_path), "--data", str(data),
                                    "--models-dir", str(tmp_path / "models"), *extra])


def test_no_valid_pairs_reports_the_ignored_count(tmp_path):
    result = _invoke(tmp_path, "--name", "m")
    assert result.exit_code != 0 and "no valid pairs (2 lines ignored)" in result.output


def test_name_must_be_plain(tmp_path):
    result = _invoke(tmp_path, "--name", "../escape")
    assert result.exit_code != 0 and "plain name" in result.output


def test_qlora_refused_with_the_reason_where_unsupported(tmp_path):
    supported, reason = qlora_support()
    result = _invoke(tmp_path, "--name", "m", "--method", "qlora")
    if supported:
        assert "no valid pairs" in result.output
    else:
        assert result.exit_code != 0 and reason in result.output.replace("\n", " ")
