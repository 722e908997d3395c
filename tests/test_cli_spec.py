"""`--spec FILE` on every command that reads a data folder (issue 29, item 8): one shared option, a spec of
any name found, and an error that names the files searched and the option."""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import pytest

from core.cli import build_parser, main
from core.data.spec import DatasetSpec


def _options(parser: argparse.ArgumentParser) -> dict[str, set[str]]:
    """Each command's option strings (`import`'s dataset sub-commands under 'import NAME')."""
    out: dict[str, set[str]] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out[name] = {s for a in sub._actions for s in a.option_strings}
                out.update({f"{name} {k}": v for k, v in _options(sub).items()})
    return out


def test_every_command_that_reads_a_data_folder_takes_spec():
    options = _options(build_parser())
    reads_data = {name for name, opts in options.items() if "--data" in opts}
    assert reads_data >= {"validate", "train", "score", "evaluate", "calibration", "guard", "tune", "faithfulness",
                          "doctor"}
    assert [name for name in reads_data if "--spec" not in options[name]] == []
    assert "--data" not in options["predict"] | options["explain"] | options["bench"]  # they read no data folder


@pytest.fixture
def labs_folder(tmp_path):
    """40 cases of one inline lab group whose spec is called study.yaml."""
    rng = np.random.default_rng(0)
    pd.DataFrame({"case_id": [f"c{i}" for i in range(40)], "y": ["a" if i % 2 else "b" for i in range(40)],
                  "wbc": rng.uniform(4, 11, 40).round(1)}).to_csv(tmp_path / "manifest.csv", index=False)
    DatasetSpec.from_dict({"label": "y", "modalities": [{"name": "labs", "type": "tabular", "columns": ["wbc"]}],
                           "labs": [{"name": "wbc", "unit": "10^9/L"}]}).save(tmp_path / "study.yaml")
    return tmp_path


def test_validate_with_spec_and_the_error_without(labs_folder, capsys):
    assert main(["validate", "--data", str(labs_folder)]) == 2
    err = capsys.readouterr().err
    assert "has no dataset spec (looked for spec.yaml, spec.yml, spec.json, dataset.yaml" in err
    assert "study.yaml" in err and "--spec FILE" in err and "Traceback" not in err
    assert main(["validate", "--data", str(labs_folder), "--spec", str(labs_folder / "study.yaml"), "--json"]) == 0
    assert '"ok": true' in capsys.readouterr().out
    assert main(["validate", "--spec", str(labs_folder / "study.yaml"), "--json"]) == 0  # its folder is the data
    assert main(["validate", "--data", str(labs_folder), "--spec", "nosuch.yaml"]) == 2
    assert "--spec: nosuch.yaml is not a file" in capsys.readouterr().err
    assert main(["validate"]) == 2 and "name the data folder" in capsys.readouterr().err
