"""What facesort trusts: a model file is a pickle that can run code, so only safe ones are loaded; no file name
ever reaches a shell."""
import ast
import csv
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import sorter
import sorter.model
from sorter.archs import sha256_of
from sorter.errors import FacesortError
from sorter.model import bundled_model_path, expected_sha256, load_model, python_version

ROOT = Path(sorter.__file__).resolve().parent.parent


class Payload:
    """Unpickling this creates a file: what a hostile model file could do, harmlessly (in a file laid out like a
    fastai export: torch's zip format, a learner with a threshold)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (Path(self.marker),)


@pytest.fixture
def hostile_model(tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    path = folder / "hostile.pkl"
    torch.save(SimpleNamespace(loss_func=SimpleNamespace(thresh=0.5), payload=Payload(tmp_path / "ran")), path)
    path.chmod(0o644)
    return path


def test_a_model_file_can_run_code_when_loaded(hostile_model, tmp_path):
    """Why the checks below matter: a model the user names and trusts is loaded, and this one runs its code."""
    with pytest.raises(FacesortError, match="cannot load model"):
        load_model(hostile_model)
    assert (tmp_path / "ran").exists()


@pytest.mark.parametrize("mode", [0o664, 0o646, 0o666])
def test_a_model_others_can_write_is_refused_unread(hostile_model, tmp_path, mode):
    hostile_model.chmod(mode)
    with pytest.raises(FacesortError, match="writable by other users"):
        load_model(hostile_model)
    assert not (tmp_path / "ran").exists()


def test_a_model_in_a_folder_anyone_can_write_is_refused(hostile_model, tmp_path):
    hostile_model.parent.chmod(0o777)
    with pytest.raises(FacesortError, match="folder .* is writable by everyone"):
        load_model(hostile_model)
    assert not (tmp_path / "ran").exists()
    hostile_model.parent.chmod(0o1777)  # sticky, like /tmp: only the owner can replace the file
    with pytest.raises(FacesortError, match="cannot load model"):
        load_model(hostile_model)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file to another user")
def test_a_model_owned_by_another_user_is_refused(hostile_model, tmp_path):
    os.chown(hostile_model, 12345, 12345)
    with pytest.raises(FacesortError, match=r"belongs to another user \(uid 12345\)"):
        load_model(hostile_model)
    assert not (tmp_path / "ran").exists()


def test_a_model_exported_by_another_python_is_refused(colour_model, tmp_path):
    learn, _, _ = load_model(colour_model)
    learn.facesort = {**learn.facesort, "python": "3.1"}  # fastai pickled some of its code as that version's bytecode
    learn.export(tmp_path / "old.pkl")
    (tmp_path / "old.pkl").chmod(0o644)
    with pytest.raises(FacesortError, match=f"exported by Python 3.1 and this is Python {python_version()}"):
        load_model(tmp_path / "old.pkl")


def test_the_cli_refuses_with_one_line(cli, colour_model, photos, tmp_path):
    model = tmp_path / "shared.pkl"
    shutil.copyfile(colour_model, model)
    model.chmod(0o664)
    result = cli("run", photos, "--out", tmp_path / "out", "--model", model)
    assert result.exit_code == 1
    assert result.output == (f"facesort: error: refusing to load {model}: it is writable by other users "
                             "(chmod go-w it), and a model file can run code when loaded\n")


def bundle(tmp_path, monkeypatch, model, record):
    """Install `model` as the bundled model, with `record` (None: no record) as its .sha256 file."""
    path = tmp_path / "share" / "facesort-default.pkl"
    path.parent.mkdir()
    shutil.copyfile(model, path)
    if record is not None:
        Path(f"{path}.sha256").write_text(f"{record}  facesort-default.pkl\n")
    monkeypatch.setattr(sorter.model, "bundled_model_path", lambda whole_image=False: path)
    return path


def test_the_bundled_model_must_match_its_recorded_sha256(colour_model, tmp_path, monkeypatch):
    path = bundle(tmp_path, monkeypatch, colour_model, sha256_of(colour_model))
    assert load_model()[1:] == (path, sha256_of(colour_model))
    Path(f"{path}.sha256").write_text("0" * 64 + "  facesort-default.pkl\n")
    with pytest.raises(FacesortError, match="does not match its recorded sha256"):
        load_model()
    Path(f"{path}.sha256").unlink()
    with pytest.raises(FacesortError, match="has no recorded sha256"):
        load_model()


def test_a_tampered_bundled_model_is_not_unpickled(hostile_model, tmp_path, monkeypatch):
    bundle(tmp_path, monkeypatch, hostile_model, "0" * 64)
    with pytest.raises(FacesortError, match="does not match"):
        load_model()
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize("whole_image", [False, True])
def test_each_shipped_model_matches_its_record(whole_image):
    path = bundled_model_path(whole_image)
    assert path.name == ("facesort-whole-image.pkl" if whole_image else "facesort-default.pkl")
    assert sha256_of(path) == expected_sha256(path)


def test_the_report_records_the_model_sha256(cli, colour_model, photos, tmp_path):
    out = tmp_path / "out"
    assert cli("run", photos, "--out", out, "--model", colour_model, "--whole-image").exit_code == 0
    with open(out / "facesort-report.csv", encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 7 and {row["model_sha256"] for row in rows} == {sha256_of(colour_model)}


SHELL_CALLS = {("os", name) for name in ("system", "popen", "execl", "execle", "execlp", "execlpe", "execv",
                                          "execve", "execvp", "execvpe", "spawnl", "spawnle", "spawnlp", "spawnlpe",
                                          "spawnv", "spawnve", "spawnvp", "spawnvpe", "posix_spawn", "posix_spawnp")}


def test_no_code_path_can_hand_a_file_name_to_a_shell():
    """facesort starts no program at all: no subprocess, os.system, exec or spawn, anywhere in the package."""
    found = []
    for path in sorted((ROOT / "sorter").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import) or isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                found += [f"{path.name}: import {n}" for n in names if n in ("subprocess", "pty", "commands")]
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                if (node.value.id, node.attr) in SHELL_CALLS:
                    found.append(f"{path.name}:{node.lineno}: {node.value.id}.{node.attr}")
            elif isinstance(node, ast.keyword) and node.arg == "shell":
                found.append(f"{path.name}:{node.lineno}: shell=")
    assert found == []
