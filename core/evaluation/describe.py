"""An evaluation's or a checkpoint's model in words: its sampler, its encoders, and which model and data a
table belongs to (what the Robustness lab, the Model card and the README quote)."""

from __future__ import annotations

def sampler(config: dict) -> str:
    """The diffusion sampler of a configuration in words (what the README and the Model card quote)."""
    d = config.get("diffusion", {})
    if not d.get("enabled", True):
        return "no diffusion"
    return f"{d.get('sample_steps')} DDIM steps × {d.get('samples')} samples"


def provenance(result: dict, meta: dict | None, model: str = "the shipped checkpoint") -> tuple[str, bool]:
    """Which models, data and date an evaluation's tables belong to, in words, and whether they are the open
    checkpoint's (`model`: that checkpoint in words; the evaluation is of the open model's data and configuration
    when the data and the model and diffusion configuration match its meta.json: its models are trained by the
    evaluation, the open model itself not among them since issue 28). The date is the run's `created`
    (recorded since it was added; older files say so)."""
    when = (f"made {result['created']}" if result.get("created") else "date not recorded in the result file") \
        + (f", code {result['commit']}" if result.get("commit") else "")
    fingerprint = str(result.get("data_fingerprint", ""))[:8] or "?"
    config = result.get("config", {})
    own_data = meta is not None and result.get("data_fingerprint") == meta.get("data_fingerprint")
    if result.get("quick"):
        data = (f"the data of {model} ({result.get('data_name') or (meta or {}).get('spec', {}).get('name', '?')}, "
                f"{result.get('data_size') or (meta or {}).get('data_size', '?')} cases, data {fingerprint}…) with its "
                "configuration and" if own_data else
                f"{result['data_name']} ({result.get('data_size', '?')} cases, data {fingerprint}…)"
                if result.get("data_name") and not str(result.get("data", "")).rstrip("/").endswith("cohort-quick")
                else "the 600-case quick cohort")
        return (f"Models trained by this quick evaluation ({when}) on {data}{'' if own_data else ' with'} the short schedule, sampler "
                f"{sampler(config)}: a demonstration, not {model} itself.", False)
    if meta is None:
        return f"Evaluation {when}, data {fingerprint}…, sampler {sampler(config)}.", False
    mine = meta.get("config", {})
    same = own_data and all(config.get(k) == mine.get(k) for k in ("model", "diffusion"))
    if same:
        return (f"Evaluation of {model}'s data and configuration ({when}; data {fingerprint}…, "
                f"sampler {sampler(mine)}).", True)
    return (f"An earlier model, not {model}: evaluated {when.removeprefix('made ')} on data "
            f"{fingerprint}… with sampler {sampler(config)}; {model} was trained on "
            f"data {str(meta.get('data_fingerprint', ''))[:8]}… with sampler {sampler(mine)}, and "
            "its own figures are on the Model card.", False)


def study_provenance(study: dict, meta: dict) -> tuple[str, bool]:
    """Whether a regime study (core/evaluation/regime_study.py) is of the shipped model's cohort and
    configuration, in words: its models are its own, but an earlier version of the cohort or of the model is
    another experiment (files before issue 28 record neither, so they are read as earlier)."""
    when = f"made {study['created']}" if study.get("created") else "date not recorded in the study file"
    when += f", code {study['commit']}" if study.get("commit") else ""
    config = study.get("run_config") or {}
    same = (study.get("data_fingerprint") == meta.get("data_fingerprint")
            and all(config.get(k) == meta.get("config", {}).get(k) for k in ("model", "diffusion")))
    if same:
        return f"Regime study on the shipped checkpoint's cohort and configuration ({when}).", True
    return (f"An earlier study, not of today's built-in cohort and configuration ({when}): its models were trained "
            f"on {'data ' + str(study['data_fingerprint'])[:8] + '…' if study.get('data_fingerprint') else 'an earlier version of the cohort'}"
            f", the shipped checkpoint on data {str(meta.get('data_fingerprint', ''))[:8]}…. `python -m core evaluate "
            "--regimes all --short --seeds 3` runs it on today's (hours on a CPU).", False)


def run_time(result: dict) -> str:
    """How long an evaluation took, in words, honest about a run resumed from models that earlier runs of the
    same command saved (`reused` of `models`; older result files record neither)."""
    took = f"{result['seconds'] / 60:.0f} min" if result["seconds"] >= 120 else f"{result['seconds']:.0f} s"
    where = f"on {result['machine']['cpus']} CPUs ({result['device']})"
    reused, models = result.get("reused", 0), result.get("models")
    if not reused:
        return f"{took} {where}"
    if reused == models:
        return (f"every model saved by earlier runs of the same command (resumed), {where}; the tables and "
                f"bootstraps {took}")
    return f"{took} {where} for {models - reused} of {models} models (the rest saved by earlier runs of the same command)"


def encoders(config: dict, kinds: list[str]) -> str:
    """The modality encoders of a checkpoint's configuration in words, for the modality types it reads
    (`kinds`: image, text, tabular), so a ViT model is not described as EfficientNet."""
    m = config.get("model", {})
    parts = []
    if "image" in kinds:
        parts.append(f"a small ViT trained from scratch ({m.get('vit_depth')} layers, {m.get('vit_patch')} px patches)"
                     if m.get("image_encoder") == "vit" else
                     f"frozen EfficientNet-Lite0 ({m.get('image_features', 'final')} features) for images")
        if m.get("image_encoder") == "vit":
            parts[-1] += " for images"
    if "text" in kinds:
        parts.append("frozen all-MiniLM-L6-v2 for notes" + (", negation-aware" if m.get("note_negation") else ""))
    if "tabular" in kinds:
        parts.append("an MLP for tabular values")
    return "; ".join(parts)
