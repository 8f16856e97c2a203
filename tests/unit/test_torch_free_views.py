"""`lmprof show`, `compare` and `sysinfo` render saved or read facts without importing torch
(seconds of import, and a GPU stack's start-up, that a report of a finished run never needs).

Each command runs in a fresh interpreter, so nothing this test process imported can hide an
import the command makes."""

import subprocess
import sys

from helpers.runs_for_html import hostile_run
from helpers.runs_for_tests import sample_run

CHECK = """
import sys
from lmprof.cli.main import main
code = main({argv!r})
assert code == 0, code
loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith(("torch.", "transformers")))
print("LOADED", loaded)
"""


def loaded_modules(*argv: str) -> list[str]:
    proc = subprocess.run(
        [sys.executable, "-c", CHECK.format(argv=list(argv))], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("LOADED "))
    return eval(line.removeprefix("LOADED "))


def test_show_and_its_html_do_not_import_torch(tmp_path):
    sample_run().save(tmp_path / "plain")
    hostile_run().save(tmp_path / "deep")  # a --deep record: operators, flames, memory by kind
    for run_dir in ("plain", "deep"):
        assert loaded_modules("show", str(tmp_path / run_dir)) == []
        assert loaded_modules("show", "--html", str(tmp_path / run_dir)) == []
        assert loaded_modules("show", "--json", str(tmp_path / run_dir)) == []


def test_compare_does_not_import_torch(tmp_path):
    sample_run().save(tmp_path / "a")
    sample_run().save(tmp_path / "b")
    assert loaded_modules("compare", str(tmp_path / "a"), str(tmp_path / "b")) == []


def test_sysinfo_does_not_import_torch_and_still_names_its_build():
    assert loaded_modules("sysinfo") == []
    proc = subprocess.run(
        [sys.executable, "-m", "lmprof", "sysinfo", "--json"], capture_output=True, text=True, timeout=120
    )
    import json

    import torch

    packages = json.loads(proc.stdout)["packages"]
    assert packages["torch"] == torch.__version__ and packages["cuda"] == torch.version.cuda
