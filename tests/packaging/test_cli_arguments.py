"""Arguments of the package tools that would lose a user's files are refused before any work (exit 2).

Real files in a temporary directory; the refusal comes before the package is read, so no model runs.
"""

from __future__ import annotations

from job import model_package


def quantize(tmp_path, out) -> int:
    package = tmp_path / "fp32"
    package.mkdir(exist_ok=True)
    return model_package.main(["quantize", "--package", str(package), "--calibration", str(tmp_path), "--out", str(out)])


def test_quantize_refuses_an_out_directory_that_holds_files(tmp_path, capsys):
    out = tmp_path / "other-package"
    out.mkdir()
    (out / "model.json").write_text('{"name": "another package"}')
    assert quantize(tmp_path, out) == 2
    err = capsys.readouterr().err
    assert f"--out {out} already holds files (model.json...)" in err and "new or empty directory" in err
    assert (out / "model.json").read_text() == '{"name": "another package"}'
    assert sorted(p.name for p in out.iterdir()) == ["model.json"]


def test_quantize_refuses_an_out_that_is_a_file(tmp_path, capsys):
    out = tmp_path / "notes.txt"
    out.write_text("mine")
    assert quantize(tmp_path, out) == 2
    assert f"--out {out} is a file" in capsys.readouterr().err
    assert out.read_text() == "mine"


def test_an_empty_out_directory_gets_past_the_check(tmp_path, capsys):
    """It fails later, on the missing package, with the package's own message: the check let it through."""
    out = tmp_path / "empty"
    out.mkdir()
    assert quantize(tmp_path, out) == 2
    err = capsys.readouterr().err
    assert "no model.json there" in err and "--out" not in err
