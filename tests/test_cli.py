"""Input errors from any component reach the user as one line naming the problem, exit code 2, no traceback."""

import pytest

from bench.cli import main


@pytest.mark.parametrize(
    "argv, message",
    [
        (["embed", "report", "random:x"], "expected random[:SEED[:WIDTH]]"),
        (["pretrain", "--objective", "crysatom", "--corpus", "sample", "--dim", "8", "--encoder-set", "hidden=16",
          "--epochs", "1"], "dim 8 conflicts with encoder option hidden=16"),
        (["pretrain", "--objective", "crysatom", "--set", "oops"], "--set 'oops': expected KEY=VALUE"),
        (["train", "--encoder", "cgcnn", "--task", "dft_3d_formation_energy_peratom", "--features", "onehot",
          "--data-dir", "sample", "--device", "cuda:99"], "cuda"),
        (["train", "--encoder", "cgcnn", "--task", "dft_3d_formation_energy_peratom", "--features",
          "embedding:/nonexistent/table.json", "--data-dir", "sample"], "table.json"),
    ],
)
def test_input_errors_are_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert err.count("\n") == 1


# ---- malformed inputs named in one line (file, line) ----------------------------------------------------------


@pytest.mark.parametrize(
    "text, where",
    [
        (b"tasks: [dft_3d_formation_energy_peratom\nfractions: [0.5]\n", "line 2"),  # unclosed flow list
        (b"tasks:\n  - dft_3d_formation_energy_peratom\n fractions: [0.5]\n", "line 3"),  # bad indentation
        (b"tasks: [dft_3d_formation_energy_peratom]\nname: \xff\xfe\n", "not UTF-8"),
    ],
)
def test_malformed_suite_yaml_names_the_file_and_line(tmp_path, capsys, text, where):
    suite = tmp_path / "mysuite.yaml"
    suite.write_bytes(text)
    assert main(["run", "--suite", str(suite), "--encoder", "cgcnn", "--store", str(tmp_path / "store")]) == 2
    err = capsys.readouterr().err
    assert str(suite) in err and where in err and "Traceback" not in err
    assert err.count("\n") == 1


def test_table_that_is_not_utf8_json_names_the_file(tmp_path, capsys):
    table = tmp_path / "vectors.json"
    table.write_bytes(b"\x80\x04\x95\x00\x00pickled")  # a pickle under a .json name
    assert main(["embed", "report", str(table)]) == 2
    err = capsys.readouterr().err
    assert str(table) in err and "not UTF-8" in err and "Traceback" not in err
    assert err.count("\n") == 1


# ---- plugins that fail: the plugin and the user's own frame, not crysbench's internals -------------------------


@pytest.mark.parametrize(
    "source, expected",
    [
        ("import math\n\n\ndef build():\n    return math.sqrt(-1)\n\n\nbuild()\n",
         ["failed to load", "ValueError: math domain error", ":5: return math.sqrt(-1)"]),
        ("x = 1\ndef broken(:\n    pass\n", ["syntax error", ":2: def broken(:"]),
        ("from bench.objectives import register_objective\n\n@register_objective('unate')\nclass Again:\n"
         "    pass\n", ["'unate' is already registered", ":3: @register_objective('unate')"]),
    ],
)
def test_plugin_that_fails_on_import_is_one_line_naming_it(tmp_path, capsys, source, expected):
    plugin = tmp_path / "my_plugin.py"
    plugin.write_text(source)
    assert main(["--plugin", str(plugin), "list", "objectives"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert f"plugin {plugin}" in err and all(e in err for e in expected), err
    assert "bench/plugins.py" not in err and "importlib" not in err


def test_plugin_module_that_raises_shows_its_frame(tmp_path, capsys, monkeypatch):
    pkg = tmp_path / "broken_plugin_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from broken_plugin_pkg import helpers\n")
    (pkg / "helpers.py").write_text("SETTINGS = {}\nWIDTH = SETTINGS['width']\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["--plugin", "broken_plugin_pkg", "list", "objectives"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert "plugin module 'broken_plugin_pkg' failed to load: KeyError: 'width'" in err
    assert f"{pkg / 'helpers.py'}:2: WIDTH = SETTINGS['width']" in err


# ---- answers before the heavy imports --------------------------------------------------------------------------

HEAVY = ("torch", "dgl", "ray", "pymatgen", "jarvis", "pandas", "matplotlib")

_PROBE = """
import contextlib, io, json, sys
from bench.cli import main

def rc(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
    return [code, out.getvalue() + err.getvalue()]

results = [rc(argv) for argv in json.loads(sys.argv[1])]
print(json.dumps({"results": results, "heavy": sorted(m for m in %r if m in sys.modules)}))
""" % (HEAVY,)


def _probe(cases: list[list[str]]) -> dict:
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(cases)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_help_and_argument_errors_import_no_heavy_module():
    from bench.cli import COMMANDS

    cases = [[c, "--help"] for c in COMMANDS] + [[c, "--bogus"] for c in COMMANDS]
    cases += [["graphs", "build", "--help"], ["embed", "report", "--help"], ["data", "info", "--help"],
              ["list", "encoderz"], ["--help"]]
    res = _probe(cases)
    assert res["heavy"] == [], res["heavy"]
    for argv, (code, text) in zip(cases, res["results"]):
        assert code == (0 if "--help" in argv else 2), (argv, text)


def test_mistyped_registry_names_are_refused_before_torch_is_imported():
    # any earlier command (here `bench list encoders`, which imports everything) leaves the built-in names in the
    # cache (private to the test session, see conftest)
    listed = _probe([["list", "encoders"]])
    assert listed["results"][0][0] == 0 and "torch" in listed["heavy"]
    task = "dft_3d_formation_energy_peratom"
    cases = {
        ("train", "--encoder", "cgcn", "--task", task, "--features", "onehot"): "Did you mean 'cgcnn'",
        ("train", "--encoder", "cgcnn", "--task", task, "--features", "onehott"): "Did you mean 'onehot'",
        ("train", "--encoder", "cgcnn", "--task", task + "s", "--features", "onehot"): f"Did you mean '{task}'",
        ("pretrain", "--objective", "unat"): "Did you mean 'unate'",
        ("graphs", "build", "--spec", "alignnn", "--task", task): "Did you mean 'alignn'",
        ("run", "--encoder", "cgcnn,megnett"): "Did you mean 'megnet'",
    }
    res = _probe([list(c) for c in cases])
    for (argv, message), (code, text) in zip(cases.items(), res["results"]):
        assert code == 2 and message in text and text.count("\n") == 1, (argv, text)
    assert res["heavy"] == [], res["heavy"]


def test_early_name_check_stands_aside_for_plugins_and_stale_lists(tmp_path, monkeypatch):
    """A plugin may register the name, and a list saved by other source files may lack a new built-in: in both
    cases nothing is refused early (the registries decide after loading)."""
    import bench.plugins as plugins
    from bench.registry import RegistryError

    plugins.load_plugins([])
    plugins.save_builtin_names()
    with pytest.raises(RegistryError, match="Did you mean 'cgcnn'"):
        plugins.check_early([("encoder", "cgcn")])
    plugins.check_early([("encoder", "my-encoder")], specs=["./my_plugin.py"])
    monkeypatch.setattr(plugins, "_source_fingerprint", lambda: "other sources")
    plugins.check_early([("encoder", "cgcn")])


# ---- jarvis-tools' chatter stays out of the output -------------------------------------------------------------


def test_jarvis_download_chatter_is_not_printed(tmp_path, capsys, monkeypatch):
    from bench.tasks import jarvis as tj
    from bench.tasks.base import TaskError

    def chatty(dataset, store_dir=None):
        print("Obtaining 3D dataset 55k ...")
        print("Reference:https://www.nature.com/articles/s41524-020-00440-1")
        print("Loading the zipfile...")
        print("Loading completed.")
        return [{"jid": "JVASP-1"}]

    monkeypatch.setattr("jarvis.db.figshare.data", chatty)
    assert tj._jarvis_rows("dft_3d", tmp_path / "jdft_3d-8-18-2021.json.zip") == [{"jid": "JVASP-1"}]
    out, err = capsys.readouterr()
    for line in ("Obtaining", "Reference:", "Loading"):
        assert line not in out and line not in err

    def failing(dataset, store_dir=None):
        print("Obtaining 3D dataset 55k ...")
        raise ConnectionError("no route to host")

    monkeypatch.setattr("jarvis.db.figshare.data", failing)
    with pytest.raises(TaskError, match="no route to host"):  # real errors still reach the user
        tj._jarvis_rows("dft_3d", tmp_path / "jdft_3d-8-18-2021.json.zip")
    assert "Obtaining" not in capsys.readouterr().out


@pytest.mark.parametrize("argv, close", [(["trian"], "'train'"), (["--plugin", "x.py", "lst"], "'list'"),
                                         (["leaderbord", "--store", "s"], "'leaderboard'")])
def test_a_mistyped_command_gets_did_you_mean(argv, close, capsys):
    from bench.cli import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"Did you mean {close}" in err and "Available:" in err
