"""The model the app opens, and the data its demo cases come from: one place, so that no page assumes the
shipped checkpoint or the embedded cohort.

    make run CHECKPOINT=runs/mine              # or RMD_CHECKPOINT=runs/mine streamlit run app.py
    RMD_DATA=/data/mine make run CHECKPOINT=…  # demo cases from another copy of the data (default: the data
                                               # folder recorded in the checkpoint when it trained)

The shipped checkpoint's demo cases come from the embedded cohort (generated on first use). Results the app
shows beside a model live next to it: `python -m core evaluate --checkpoint DIR` writes DIR/evaluation (the
shipped model's are in assets/evaluation), `--quick` DIR/evaluation-quick, `score --checkpoint DIR` DIR/score.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from core.checkpoint import WEIGHTS, read_meta
from core.data.dataset import Dataset, recorded_source, resolve_source
from core.errors import RobustMDiffError
from core.paths import ASSETS, DEFAULT_CHECKPOINT, ROOT, default_cohort_dir

CHECKPOINT_ENV = "RMD_CHECKPOINT"
DATA_ENV = "RMD_DATA"


def is_shipped(checkpoint: str | Path | None) -> bool:
    """Whether a checkpoint folder is the shipped one (None means it)."""
    return checkpoint is None or Path(checkpoint).resolve() == DEFAULT_CHECKPOINT.resolve()


def evaluation_dir(checkpoint: str | Path | None, quick: bool = False) -> Path:
    """Where `evaluate --checkpoint DIR` writes its comparison by default, and where the app reads it: beside the
    checkpoint (DIR/evaluation, or DIR/evaluation-quick for --quick, which never resumes a full run's models);
    the shipped checkpoint's in assets/evaluation."""
    if is_shipped(checkpoint):
        return ASSETS / ("evaluation-quick" if quick else "evaluation")
    return Path(checkpoint) / ("evaluation-quick" if quick else "evaluation")


def score_dir(checkpoint: str | Path | None) -> Path:
    """Where the app's "score this model" writes `score --checkpoint DIR --out` (score.json): beside it."""
    return (ASSETS / "score") if is_shipped(checkpoint) else Path(checkpoint) / "score"


def shown(path: Path) -> str:
    """A path as the sidebar shows it: relative to the project when inside it."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)



@dataclass(frozen=True)
class OpenModel:
    """A checkpoint folder and the data its demo cases (and the review study's cases) come from."""

    checkpoint: Path
    data: Path | None  # a folder or spec file for Dataset.open; None: no data here (uploads only)
    shipped: bool
    data_note: str = ""  # why there is no data, or where it came from, in words

    @classmethod
    def from_environment(cls, env: dict[str, str] | None = None) -> "OpenModel":
        """RMD_CHECKPOINT and RMD_DATA (empty or unset: the shipped checkpoint and its embedded cohort). A folder
        that is not a checkpoint is refused here, with what to do, before any page draws."""
        env = os.environ if env is None else env
        raw = (env.get(CHECKPOINT_ENV) or "").strip()
        checkpoint = Path(raw).expanduser() if raw else DEFAULT_CHECKPOINT
        if not checkpoint.is_absolute():
            checkpoint = (Path.cwd() / checkpoint)
        if not checkpoint.is_dir():
            raise RobustMDiffError(f"{CHECKPOINT_ENV}={raw}: no such folder. Give a checkpoint folder written by "
                                   "`python -m core train --out DIR`.")
        if not (checkpoint / WEIGHTS).exists():
            raise RobustMDiffError(f"{CHECKPOINT_ENV}={raw}: not a checkpoint folder (it has no {WEIGHTS}). Give a "
                                   "folder written by `python -m core train --out DIR`.")
        meta = read_meta(checkpoint)
        shipped = is_shipped(checkpoint)
        given = (env.get(DATA_ENV) or "").strip()
        if given:
            data = resolve_source(Path(given).expanduser(), None, meta.get("data_source"))
            return cls(checkpoint, data, shipped, f"{DATA_ENV}={given}")
        if shipped:
            return cls(checkpoint, None, True, "the embedded synthetic cohort")
        recorded = recorded_source(meta.get("data_source"))
        if recorded is None:
            where = (meta.get("data_source") or {}).get("folder")
            return cls(checkpoint, None, False, (f"the data it was trained on ({where}) is not on this machine"
                                                 if where else "it recorded no data folder")
                       + f": set {DATA_ENV}=DIR for demo cases")
        return cls(checkpoint, recorded, False, "the data it was trained on")

    @property
    def has_data(self) -> bool:
        return self.shipped or self.data is not None

    def dataset(self) -> Dataset:
        """The data of the demo cases: the embedded cohort for the shipped model (generated on first use), else
        the data folder; refused when its modalities are not the checkpoint's."""
        if self.shipped and self.data is None:
            from core.data.cohort.generate import ensure_cohort

            return Dataset.open(ensure_cohort(default_cohort_dir(), progress=False))
        if self.data is None:
            raise RobustMDiffError(f"No data for demo cases: {self.data_note}.")
        try:
            ds = Dataset.open(self.data)
        except RobustMDiffError as e:
            raise RobustMDiffError(f"No demo cases: the data ({self.data_note}) cannot be opened: {e}.") from None
        wanted = [(m["name"], m["type"]) for m in read_meta(self.checkpoint)["spec"]["modalities"]]
        found = [(m.name, m.type) for m in ds.spec.modalities]
        if found != wanted:
            raise RobustMDiffError(f"The data at {self.data} has modalities {found}; the model reads {wanted}. "
                                   f"Set {DATA_ENV} to a copy of the data it was trained on.")
        return ds

    def describe(self, meta: dict) -> dict[str, str]:
        """What the sidebar says of the open model: name, data, date and method."""
        spec = meta.get("spec", {})
        made = meta.get("created") or time.strftime("%Y-%m-%d", time.localtime((self.checkpoint / WEIGHTS).stat().st_mtime))
        data = "embedded synthetic cohort" if self.shipped and self.data is None else \
            shown(Path(self.data)) if self.data is not None else self.data_note
        return {"name": "shipped default" if self.shipped else shown(self.checkpoint), "data": f"{spec.get('name', '?')}"
                f" ({meta.get('data_size', '?')} cases) · {data}", "date": str(made)[:10],
                "method": str(meta.get("method") or "robustmdiff")}

    @property
    def name(self) -> str:
        """The model in words, as every page names it beside its results."""
        return "the shipped checkpoint" if self.shipped else f"this model ({shown(self.checkpoint)})"

    @property
    def data_given(self) -> Path | None:
        """The data to hand to a command for this model: only what RMD_DATA chose (without it the commands read
        the data the checkpoint recorded, or the embedded cohort for the shipped model)."""
        return self.data if self.data_note.startswith(DATA_ENV) else None

    def command(self, name: str, *extra: str) -> str:
        """`python -m core NAME --checkpoint DIR [--data …] EXTRA` for this model, as a page quotes it: the exact
        command that makes a result the page does not find yet."""
        parts = ["python", "-m", "core", name, "--checkpoint", shown(self.checkpoint)]
        if self.data_given is not None:
            data = Path(self.data_given)
            parts += (["--data", shown(data.parent), "--spec", data.name] if data.is_file() else ["--data", shown(data)])
        return " ".join(parts + list(extra))

    def evaluation_dirs(self) -> list[Path]:
        """The comparison results the app shows for this model, best first: the full run, else the quick one."""
        return [evaluation_dir(self.checkpoint), evaluation_dir(self.checkpoint, quick=True)]

    def comparison_checkpoints(self) -> list[Path]:
        """Comparison models trained next to this one (`train --method NAME --out DIR/comparison/NAME`; for the
        shipped model, checkpoints/comparison/*): what the review study may blind against it."""
        folder = (DEFAULT_CHECKPOINT.parent if self.shipped else self.checkpoint) / "comparison"
        return sorted(p for p in folder.glob("*") if (p / WEIGHTS).exists()) if folder.is_dir() else []
