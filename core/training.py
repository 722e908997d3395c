"""Training (design §3.2): curriculum masking, rare-disease sampling, consistency between two masks,
diffusion loss plus classification loss; validation each epoch, early stopping, then calibration.

Frozen backbone features are cached (`core/features.py`), so an epoch on the default cohort takes
seconds on a 2-core CPU. The same loop runs on CUDA when a GPU is there (`core/device.py`: the trained
parts in float32 with TF32 products; random draws from CPU generators, so a seed means one stream).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Collection

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from core.calibration import calibrate
from core.calibration.views import Views
from core.data.dataset import Dataset
from core.data.leakage import note_alone_leak
from core.evaluation.metrics import classification_metrics
from core.features import FeatureTable, dataset_features, modalities_of, unmeasured_labs
from core.device import pick_device
from core.early_stopping import Best, validation_drops, validation_scores, validation_scores_without_synthesis
from core.distributed import BatchDraws, Context, context, process_device
from core.guard.ood import fit_data_guard
from core.inference import encode_table, predict_table
from core.model.config import Config
from core.model.knowledge import KnowledgeGraph, embed_concepts
from core.model.robustmdiff import DataInfo, RobustMDiff
from core.paths import ROOT
from core.training_progress import COST, TrainingProgress
from core.jsonout import dumps

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    np.random.seed(seed)
    torch.manual_seed(seed)


def data_info(ds: Dataset, train_rows: np.ndarray | None = None) -> DataInfo:
    """`train_rows`: the training cases whose labels may be read (prevalence); all of the split by default."""
    mods, labs = modalities_of(ds.spec)
    train = ds.labels[ds.indices("train") if train_rows is None else train_rows]
    prevalence = {c: float((train == i).mean()) for i, c in enumerate(ds.classes)}
    lab_log = {m: [lab.log for lab in ds.spec.lab_features(m)] for m in labs}
    return DataInfo(mods, list(ds.classes), labs, lab_log, prevalence, list(ds.spec.rare_classes))


def build_model(info: DataInfo, config: Config, table: FeatureTable, train_idx: np.ndarray) -> tuple[RobustMDiff, list[str]]:
    """A fresh model whose knowledge buffers and lab normalisation come from the data."""
    graph = KnowledgeGraph.load(ROOT / config.model.knowledge_graph, info.classes)
    model = RobustMDiff(info, config, n_concepts=len(graph.ids))
    if getattr(model.fusion, "knowledge", None) is not None:
        model.fusion.knowledge.concepts.copy_(torch.as_tensor(embed_concepts(graph.texts)))
        model.fusion.knowledge.relevance.copy_(torch.as_tensor(graph.relevance(info.prevalence, config.model.relevance_gamma)))
    for name, kind in info.modalities:
        if kind == "tabular":
            model.encoders[name].fit_stats(table.tabular[name][train_idx])
    return model, graph.ids


def mask_probability(config: Config, epoch: int) -> float:
    """p_mask(e) = p_min + (p_max - p_min) * min(1, e / (e_total * r)); fixed at p_max without curriculum."""
    t = config.training
    if not t.curriculum:
        return t.p_max
    return t.p_min + (t.p_max - t.p_min) * min(1.0, epoch / max(1e-9, t.epochs * t.curriculum_ratio))


def sample_mask(present: torch.Tensor, p: float, draws: BatchDraws) -> torch.Tensor:
    """Which present modalities stay given: each is hidden with probability p; one always stays. Both draws
    are made whatever the rows need, so that every process's stream stays in step."""
    m = present.shape[1]
    keep = present & (draws.rand(m) >= p).to(present.device)
    scores = draws.rand(m).to(present.device) * present
    empty = ~keep.any(1) & present.any(1)
    keep[empty, scores[empty].argmax(1)] = True
    return keep


def rare_weights(labels: np.ndarray, n_classes: int, gamma: float, rare: list[int], balance_gamma: float = 0.0) -> np.ndarray:
    """Per-case sampling weight w_c = (f_max / f_c)^gamma for the declared rare classes (design §3.2.2) and
    (f_max / f_c)^balance_gamma for the others (plain class balancing; 0 = none). A calibrator with a class
    bias (`training.calibrator`: pattern+bias) undoes the prior shift this causes; the chosen one does not."""
    f = np.bincount(labels, minlength=n_classes).astype(float)
    ratio = np.where(f > 0, f.max() / np.maximum(f, 1), 1.0)
    exponent = np.full(n_classes, balance_gamma)
    exponent[list(rare)] = gamma
    return (ratio ** exponent)[labels]


def consistency(zs: list[torch.Tensor], givens: list[torch.Tensor]) -> torch.Tensor:
    """||Z(m1) - Z(m2)||^2 (design §3.2.3) per row, averaged over dimensions. The view with more modalities is the
    target (stop-gradient), so the loss pulls the poorer view towards the richer one instead of letting
    both collapse to a constant."""
    richer = (givens[0].sum(1) >= givens[1].sum(1)).unsqueeze(-1)
    target = torch.where(richer, zs[0], zs[1]).detach()
    student = torch.where(richer, zs[1], zs[0])
    return ((student - target).float() ** 2).mean(-1)


@dataclass
class TrainResult:
    model: RobustMDiff
    history: list[dict]
    best_epoch: int
    val_score: float
    seconds: float
    concept_ids: list[str]
    calibration: dict


def _classify_views(model: RobustMDiff, h: torch.Tensor, present: torch.Tensor, y: torch.Tensor, p: float,
                    draws: BatchDraws, synth_steps: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Classification loss over two random masks and their consistency (design §3.2.1, §3.2.3), each the
    global batch's mean. With `synth_steps`, hidden latents are synthesized by the denoiser (no gradient)
    instead of left out."""
    givens, noises = [], []
    for _ in range(2):  # drawn in this order (mask, noise, mask, noise): the random stream of one view at a time
        givens.append(sample_mask(present, p, draws))
        if synth_steps:
            noises.append(draws.randn(*h.shape[1:]).to(h.device))
    if synth_steps:
        # both views' hidden latents synthesized by one call over 2B rows (same draws, half the sampler calls)
        given2 = torch.cat(givens)
        hs = model.synthesize(h.detach().float().repeat(2, 1, 1), given2, torch.cat(noises).unsqueeze(0),
                              synth_steps)[0].to(h.dtype).chunk(2)
    zs, cls = [], h.new_zeros(())
    for v, given in enumerate(givens):
        if synth_steps:
            z, _ = model.fuse(torch.where(given.unsqueeze(-1), h, hs[v]), torch.ones_like(given), ~given)
        else:
            z, _ = model.fuse(h * given.unsqueeze(-1), given)
        zs.append(z)
        cls = cls + draws.row_mean(F.cross_entropy(model.logits(z).float(), y, reduction="none")) / 2
    return cls, draws.row_mean(consistency(zs, givens))


class _Loss(nn.Module):
    """One phase's loss as a module whose forward is `fn(model, ...)`, so that DistributedDataParallel sees
    the computation and averages the gradients across processes."""

    def __init__(self, model: RobustMDiff, fn):
        super().__init__()
        self.model, self.fn = model, fn

    def forward(self, *args):
        return self.fn(self.model, *args)


def _distributed(module: nn.Module, ctx: Context, device: torch.device) -> nn.Module:
    if not ctx.active:
        return module
    # some parameters sit out a phase (the encoders in phase 2, the denoiser in phase 3)
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None,
                                   find_unused_parameters=True)


def _global_batches(order: np.ndarray | torch.Tensor, size: int, ctx: Context, gen: torch.Generator):
    """Batches of `size` rows of a shared order, each split between the processes: (this one's share, the
    batch's random draws); a tail too small to give every process a row is dropped by all of them alike."""
    for start in range(0, len(order), size):
        rows = order[start:start + size]
        if len(rows) >= ctx.world:
            yield ctx.shard(rows), BatchDraws(gen, len(rows), ctx)


def train_model(ds: Dataset, table: FeatureTable, config: Config, device: str | torch.device | None = None,
                progress: bool = True, ctx: Context | None = None,
                on_progress: Callable[[float, str], None] | None = None,
                labelled: np.ndarray | None = None) -> TrainResult:
    """Three phases, one objective (L_cls + lambda_cons L_cons + lambda_diff L_diff):
    1. encoders, fusion and classifier under curriculum masking, the denoiser learning alongside on the
       (detached) latents; early stopping picks the best encoders;
    2. the denoiser alone on the now fixed latents, until its loss settles;
    3. fusion and classifier tuned on completed latents, the hidden ones synthesized by the denoiser,
       so that the classifier reads what it will read at inference.
    `on_progress(fraction, text)` hears after every epoch and before the calibration what is going on.
    `labelled`: the training rows whose labels may be used (scarce labels, issue 17); the other training
    rows are unlabelled, and only the denoiser learns from them (phase 2)."""
    t0 = time.perf_counter()
    tc = config.training
    ctx = ctx or Context()
    device = pick_device(device)
    progress = progress and ctx.main
    seed_everything(tc.seed)
    # the sampling order, masks and noise are drawn alike by every process (core/distributed.py, BatchDraws)
    order_gen, gen = torch.Generator().manual_seed(tc.seed), torch.Generator().manual_seed(tc.seed + 7919)
    tr_all, va = ds.indices("train"), ds.indices("val")
    tr = tr_all if labelled is None else np.unique(labelled)
    if not np.isin(tr, tr_all).all():
        raise ValueError("labelled rows must be rows of the training split")
    model, concept_ids = build_model(data_info(ds, tr), config, table, tr_all)  # lab statistics need no labels
    model.to(device)
    if ctx.active:  # dropout masks come from torch's global stream: each process its own (not rank 0's copy)
        torch.manual_seed(tc.seed + 104729 * ctx.rank)
    rare = [ds.classes.index(c) for c in ds.spec.rare_classes if c in ds.classes]
    weights = torch.as_tensor(rare_weights(ds.labels[tr], len(ds.classes), tc.rare_gamma, rare, tc.balance_gamma))
    y_all = torch.as_tensor(ds.labels)
    drops = validation_drops(table.present[va], tc.val_mask, tc.seed)  # one rule for every method
    use_diffusion = model.denoiser is not None
    history: list[dict] = []
    news = TrainingProgress(on_progress if ctx.main else None, tc, use_diffusion)

    def epoch_order() -> np.ndarray:
        return tr[torch.multinomial(weights, len(tr), replacement=True, generator=order_gen).numpy()]

    # ---- phase 1 ----------------------------------------------------------------------------------------
    def phase1_loss(m: RobustMDiff, rows: np.ndarray, draws: BatchDraws, p: float):
        h, present = m.encode(table.batch(rows, device))
        cls, cons = _classify_views(m, h, present, y_all[rows].to(device), p, draws, None)
        diff = m.diffusion_loss(h, present, draws) if use_diffusion else h.new_zeros(())
        loss = tc.lambda_cls * cls + tc.lambda_cons * cons + tc.lambda_diff * diff
        return loss, torch.stack([cls.detach().float(), cons.detach().float(), diff.detach().float()])

    step = _distributed(_Loss(model, phase1_loss), ctx, device)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, tc.epochs))
    best = Best(model, tc.patience)
    bar = tqdm(range(tc.epochs), desc="phase 1: encoders + classifier", unit="epoch", disable=not progress)
    for epoch in bar:
        model.train()
        p = mask_probability(config, epoch)
        sums = torch.zeros(3, device=device)  # summed on the device: no host sync per batch
        order = epoch_order()
        for rows, draws in _global_batches(order, tc.batch_size, ctx, gen):
            loss, parts = step(rows, draws, p)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            sums += parts
        sched.step()
        sums = sums.cpu().double().numpy() / max(1, -(-len(order) // tc.batch_size))
        scores, loss = validation_scores(model, table, va, ds.labels[va], drops, device) if not use_diffusion else \
            validation_scores_without_synthesis(model, table, va, ds.labels[va], drops, device)
        history.append({"phase": 1, "epoch": epoch, "p_mask": p, "cls": sums[0], "cons": sums[1], "diff": sums[2],
                        "val_auroc": scores[0], "val_auroc_masked": scores[1], "val_loss": loss})
        bar.set_postfix(cls=f"{sums[0]:.3f}", cons=f"{sums[1]:.3f}", diff=f"{sums[2]:.3f}", val=f"{np.mean(scores):.3f}")
        news(1, f"phase 1 of {news.phases} (encoders and classifier): epoch {epoch + 1} of {tc.epochs}")
        if best.update(ctx.agree(float(np.mean(scores))), epoch, ctx.agree(loss)):
            break
    bar.close()
    best.restore()
    best_epoch, val_score = best.epoch, best.score
    news.skip_to(tc.epochs, f"phase 1 of {news.phases} done (best epoch {best_epoch + 1})")

    if use_diffusion:
        for p_ in model.encoders.parameters():
            p_.requires_grad_(False)
        model.eval()
        h_tr, present_tr = encode_table(model, table, tr, device)
        # ---- phase 2 ------------------------------------------------------------------------------------
        # the denoiser needs no labels: it learns from every training case, labelled or not
        h_all, present_all = (h_tr, present_tr) if labelled is None else encode_table(model, table, tr_all, device)
        step = _distributed(_Loss(model, lambda m, idx, draws: tc.lambda_diff * m.diffusion_loss(
            h_all[idx], present_all[idx], draws)), ctx, device)
        opt = torch.optim.AdamW(model.denoiser.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, tc.diffusion_epochs))
        bar = tqdm(range(tc.diffusion_epochs), desc="phase 2: latent diffusion", unit="epoch", disable=not progress)
        for epoch in bar:
            model.denoiser.train()
            perm = torch.randperm(len(tr_all), generator=order_gen)
            total, n = 0.0, 0
            for idx, draws in _global_batches(perm, 2 * tc.batch_size, ctx, gen):
                loss = step(idx.to(device), draws)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total, n = total + float(loss.detach()), n + 1
            sched.step()
            history.append({"phase": 2, "epoch": epoch, "diff": total / n})
            bar.set_postfix(diff=f"{total / n:.4f}")
            news(COST["phase2_epoch"], f"phase 2 of 3 (latent diffusion): epoch {epoch + 1} of {tc.diffusion_epochs}")
        bar.close()
        # ---- phase 3 ------------------------------------------------------------------------------------
        model.eval()
        best = Best(model, tc.patience)
        scores, loss = validation_scores(model, table, va, ds.labels[va], drops, device)
        best.update(ctx.agree(float(np.mean(scores))), -1, ctx.agree(loss))

        def phase3_loss(m: RobustMDiff, idx: torch.Tensor, y: torch.Tensor, draws: BatchDraws):
            cls, cons = _classify_views(m, h_tr[idx], present_tr[idx], y, tc.p_max, draws,
                                        config.diffusion.train_sample_steps)
            return tc.lambda_cls * cls + tc.lambda_cons * cons

        step = _distributed(_Loss(model, phase3_loss), ctx, device)
        params = list(model.fusion.parameters()) + list(model.head.parameters())
        opt = torch.optim.AdamW(params, lr=tc.finetune_lr, weight_decay=tc.weight_decay)
        bar = tqdm(range(tc.finetune_epochs), desc="phase 3: classifier on completed latents", unit="epoch",
                   disable=not progress)
        for epoch in bar:
            model.fusion.train()
            model.head.train()
            order = torch.as_tensor(np.searchsorted(tr, epoch_order()))
            total, n = 0.0, 0
            for idx, draws in _global_batches(order, tc.batch_size, ctx, gen):
                loss = step(idx.to(device), y_all[tr[idx.numpy()]].to(device), draws)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total, n = total + float(loss.detach()), n + 1
            scores, loss = validation_scores(model, table, va, ds.labels[va], drops, device)
            history.append({"phase": 3, "epoch": epoch, "cls": total / n, "val_auroc": scores[0],
                            "val_auroc_masked": scores[1], "val_loss": loss})
            bar.set_postfix(loss=f"{total / n:.3f}", val=f"{np.mean(scores):.3f}")
            news(COST["phase3_epoch"], f"phase 3 of 3 (classifier on completed latents): epoch {epoch + 1} of "
                                       f"{tc.finetune_epochs}")
            if best.update(ctx.agree(float(np.mean(scores))), epoch, ctx.agree(loss)):
                break
        bar.close()
        best.restore()
        val_score = best.score
        news.skip_to(news.total - COST["calibration_diffusion"], "phase 3 of 3 done")
    news(0, f"calibrating on {len(va)} validation cases")
    calibration = calibrate(model, table, ds.labels, tr, va, device, on_progress=news.rest("calibration: "))
    news(news.total, "calibrated")
    return TrainResult(model, history, best_epoch, val_score, time.perf_counter() - t0, concept_ids, calibration)


def test_metrics(model: RobustMDiff, ds: Dataset, table: FeatureTable, device="cpu", seed: int = 0,
                 views: Views | None = None, natural: np.ndarray | None = None,
                 only: Collection[str] | None = None) -> dict:
    """Test-split metrics: as the data come (natural missingness), and for every availability pattern
    imposed on the complete test cases (the other modalities switched off). `views`: the complete test cases
    already predicted from subsets of their modalities under the same seed (`complete_test_views`), and `natural`: the
    split's probabilities as the data come, when the caller has them; a pattern the views lack is predicted.
    `only`: the conditions to compute ("natural", "image+labs", ...), each the same as in the full set (every
    pattern is predicted under its own seeded draw), e.g. to check a checkpoint's recorded metrics in less time."""
    from core.evaluation.patterns import availability_patterns, pattern_name

    te = ds.indices("test")
    names = [n for n, _ in model.info.modalities]
    out = {}
    if only is None or "natural" in only:
        if natural is None:
            natural = predict_table(model, table, te, None, seed=seed, device=device, describe=False).probs
        out["natural"] = {**classification_metrics(ds.labels[te], natural), "n": len(te)}
    complete = te[table.present[te].all(1)]
    for pattern in availability_patterns(len(names)):
        if only is not None and pattern_name(pattern, names) not in only:
            continue
        probs = _pattern_probs(views, complete, pattern)
        if probs is None:
            drop = np.tile(~np.asarray(pattern), (len(complete), 1))
            probs = predict_table(model, table, complete, drop, seed=seed, device=device, describe=False).probs
        out[pattern_name(pattern, names)] = {**classification_metrics(ds.labels[complete], probs), "n": len(complete)}
    return out


def _pattern_probs(views: Views | None, rows: np.ndarray, pattern: tuple[bool, ...]) -> np.ndarray | None:
    """The probabilities of `rows` predicted from exactly `pattern`, in that order, if `views` hold them all (a
    case with many modalities gets a random sample of its subsets, so one may be missing)."""
    if views is None:
        return None
    hit = np.flatnonzero((views.given == np.asarray(pattern)).all(1))
    where = dict(zip(views.rows[hit].tolist(), hit.tolist()))
    if len(hit) != len(rows) or any(int(r) not in where for r in rows):
        return None
    return views.out.probs[[where[int(r)] for r in rows]]


def train(data: str | Path, config: Config, out: str | Path, device: str | None = None, progress: bool = True,
          command: str = "", strict: bool = False, schedule: str = "full") -> dict | None:
    """Train on a data set folder and write a checkpoint folder; returns its metadata. Under torchrun
    (`core/distributed.py`) every process trains its share and rank 0 writes (the others return None).
    Unreadable inputs are quarantined and listed in <out>/data_report.json, unless `strict`. `schedule`:
    "quick" (`train --quick`, core/model/config.py `quick`) or "full", recorded in meta.json beside the config."""
    from core.calibration.report import calibration_report, complete_test_views
    from core.checkpoint import save_checkpoint

    ctx = context()
    ds = Dataset.open(data)
    dev = pick_device(process_device(ctx, device))
    table = dataset_features(ds, config.model, dev, progress=progress and ctx.main, ctx=ctx, strict=strict)
    never = unmeasured_labs(ds, table)
    if never and ctx.main:  # said once here; every statistic below treats such a lab as missing
        log.warning("warning: never measured in the training split, so the model cannot learn from it: %s",
                    ", ".join(never))
    result = train_model(ds, table, config, dev, progress, ctx)
    meta = None
    if ctx.main:
        # the complete test cases from every subset of their modalities and the split as it comes, predicted
        # once: the test metrics and the calibration report read the same predictions (the same seed, 0)
        natural = predict_table(result.model, table, ds.indices("test"), None, seed=0, device=dev, describe=False).probs
        views = complete_test_views(result.model, ds, table, dev) if result.model.denoiser is not None else None
        metrics = test_metrics(result.model, ds, table, dev, views=views, natural=natural)
        calibration = calibration_report(result.model, ds, table, dev, views=views, natural=natural,
                                         validation=(result.calibration or {}).get("next_test")) \
            if views is not None else None
        meta = {"spec": ds.spec.to_dict(), "n_concepts": len(result.concept_ids), "concept_ids": result.concept_ids,
                "data_fingerprint": ds.fingerprint(), "data_identity": ds.identity().to_dict(), "data_size": len(ds),
                "data_source": ds.source(), "test_metrics": metrics,
                "calibration_fit": result.calibration, "calibration": calibration,
                "temperature": float(result.model.temperature.mean()),
                "best_epoch": result.best_epoch, "val_score": result.val_score, "history": result.history,
                "train_seconds": result.seconds, "device": str(dev), "processes": ctx.world, "command": command,
                "schedule": schedule,
                "created": time.strftime("%Y-%m-%d %H:%M %Z")}
        leak = note_alone_leak(metrics, result.model.info.modalities)
        if leak:
            log.warning("warning: %s", leak)
            meta["warnings"] = [leak]
        if never:
            meta.setdefault("warnings", []).append(f"never measured in the training split: {', '.join(never)}")
        guard = fit_data_guard(ds, table)
        save_checkpoint(result.model, out, meta, guard)
        (Path(out) / "data_report.json").write_text(dumps(ds.quarantine.report(len(ds))), encoding="utf-8")
        if ds.quarantine:
            log.warning("%s\n  all of them: %s", ds.quarantine.summary(), Path(out) / "data_report.json")
    ctx.barrier()
    return meta
