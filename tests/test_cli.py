"""The command line itself: --help, the exit codes each command lists, one-line errors, and what starting costs
(--help, a usage error or a night with nothing new must not import torch or fastai, let alone load the model)."""
import json
import re
import subprocess
import sys

import pytest

from conftest import make_photo

BASIC = {"0", "1", "2"}
EXIT_CODES = {
    (): BASIC | {"3", "4", "5", "130/143"},
    ("run",): BASIC | {"3", "4", "5", "130/143"},
    ("predict",): BASIC | {"3"},
    ("evaluate",): BASIC,
    ("review",): BASIC,
    ("clean",): BASIC,
    ("serve",): BASIC,
}
HEAVY = ("torch", "fastai", "facenet_pytorch")


def listed_exit_codes(help_text):
    codes = help_text.split("Exit codes:")[1]
    return set(re.findall(r"^\s+(\d+(?:/\d+)?)\s", codes, re.M))


@pytest.mark.parametrize("command", [*EXIT_CODES, ("train",)], ids=lambda c: " ".join(c) or "facesort")
def test_help(cli, command):
    result = cli(*command, "--help")
    assert result.exit_code == 0
    assert "Usage:" in result.output


@pytest.mark.parametrize("command, codes", EXIT_CODES.items(), ids=[" ".join(c) or "facesort" for c in EXIT_CODES])
def test_each_command_lists_the_exit_codes_it_uses(cli, command, codes):
    help_text = cli(*command, "--help").output
    assert listed_exit_codes(help_text) == codes
    assert "after the current batch" not in help_text  # the README calls it a chunk


def in_a_fresh_process(*invocations):
    """[(exit code, output)] of each `facesort ARGS` run in one new Python, and the heavy modules it imported."""
    script = (
        "import json, sys\n"
        "from click.testing import CliRunner\n"
        "from sorter.cli import main\n"
        f"results = [(r.exit_code, r.output) for r in (CliRunner().invoke(main, a) for a in {list(invocations)!r})]\n"
        f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})\n"
        "print(json.dumps([results, heavy]))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def test_help_and_usage_errors_import_no_torch_or_fastai(tmp_path):
    missing = str(tmp_path / "missing")
    results, heavy = in_a_fresh_process(
        ["--help"], *[[name, "--help"] for name in ("run", "train", "predict", "evaluate", "review", "clean",
                                                    "serve")],
        ["clean"], ["run"], ["predict"], ["run", "--bogus"], ["evaluate", missing], ["review", missing])
    assert [code for code, _ in results] == [0] * 8 + [2] * 4 + [1, 1]
    assert results[-2][1] == f"facesort: error: data folder not found: {missing}\n"  # said before the model loads
    assert results[-1][1] == f"facesort: error: data folder not found: {missing}\n"
    assert heavy == []


def test_a_run_with_nothing_new_loads_neither_torch_nor_the_model(cli, colour_model, photos, tmp_path):
    out = tmp_path / "out"
    assert cli("run", photos, "--out", out, "--model", colour_model, "--whole-image").exit_code == 0
    [(code, output)], heavy = in_a_fresh_process(["run", str(photos), "--out", str(out), "--model",
                                                  str(colour_model), "--whole-image"])
    assert code == 0 and "0 photos to classify, 7 unchanged" in output
    assert heavy == []


@pytest.mark.parametrize("content", [b"just some notes\n", None], ids=["text", "jpeg"])
def test_a_file_that_is_not_a_model_is_named_so(cli, photos, tmp_path, content):
    model = tmp_path / "model.pkl"
    if content is None:
        make_photo(model, "male", fmt="JPEG")
    else:
        model.write_bytes(content)
    result = cli("predict", photos / "male_0.jpg", "--model", model)
    assert result.exit_code == 1
    assert result.output == (f"facesort: error: {model} is not a facesort model (not a fastai export: those are zip "
                             "archives)\n")
