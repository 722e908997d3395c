"""Image explanations at the model's own resolution: the stride-16 backbone map, cell attributions that are
complete and deterministic, the field of view, and checkpoints saved before the stride-16 default."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from core.data.readers import read_scan
from core.explain.graph import CaseGraph
from core.explain.image import IMAGE_METHODS, blurred, field_of_view, image_attribution, resolution, upsample
from core.model.backbones import ImageBackbone, image_map_shape
from core.checkpoint import LEGACY_MODEL_SETTINGS
from core.model.config import Config


def test_stride16_map_has_a_cell_per_16_pixels():
    x = torch.rand(2, 1, 128, 128)
    with torch.no_grad():
        fmap = ImageBackbone("cpu", "stride16")(x)
        final = ImageBackbone("cpu", "final")(x)
    assert fmap.shape == (2, 112, 8, 8) and image_map_shape("stride16", 128) == (112, 8)
    assert final.shape == (2, 1280, 4, 4) and image_map_shape("final", 128) == (1280, 4)
    with pytest.raises(ValueError, match="unknown image feature layer"):
        ImageBackbone("cpu", "stride8")


def test_checkpoints_saved_before_keep_the_layer_they_were_trained_with():
    assert Config.from_dict({}).model.image_features == "stride16"  # new models
    assert LEGACY_MODEL_SETTINGS["image_features"] == "final"  # read_meta fills it into older metas


def test_field_of_view_covers_every_finding_and_leaves_out_the_air(default_dataset):
    ds = default_dataset
    rows = [r for r in ds.indices("test") if ds.is_present(r, "image")][:80]
    covered, inside = [], []
    for r in rows:
        truth = json.loads((ds.root / ds.manifest.loc[r, "truth_path"]).read_text())
        px = read_scan(ds.path(r, "image")).model_input(128)
        fov = field_of_view(px)
        inside.append(fov.mean())
        assert not fov[:3, :3].any() and not fov[-3:, :3].any()  # the corners are air around the patient
        if truth.get("image_mask"):
            mask = np.asarray(Image.open(ds.root / truth["image_mask"])) > 0
            covered.append(fov[mask].mean())
    assert len(covered) > 20 and min(covered) >= 0.99
    assert 0.4 < np.mean(inside) < 0.9


def test_a_blank_image_hides_nothing():
    assert field_of_view(np.zeros((128, 128), np.float32)).all()


def test_upsampling_keeps_the_total():
    cells = np.random.default_rng(0).normal(size=(8, 8)).astype(np.float32)
    assert abs(upsample(cells, 128).sum() - cells.sum()) < 1e-3 * np.abs(cells).sum()


@pytest.fixture(scope="module")
def image_case(predictor, default_dataset):
    ds = default_dataset
    row = next(r for r in ds.indices("test") if all(ds.is_present(r, m) for m in ("image", "note", "labs")))
    return CaseGraph(predictor, ds.load(row))


def test_attributions_come_at_the_model_resolution_and_are_complete(image_case, predictor):
    g = image_case
    mc = predictor.model.config.model
    assert resolution(g, "image") == image_map_shape(mc.image_features, mc.image_size)[1]
    heat, err, steps, _ = image_attribution(g, "image", "integrated_gradients")
    assert heat.shape == (mc.image_size, mc.image_size)
    assert err <= 0.05 and steps >= 16
    px = g.image_pixels("image")
    with torch.no_grad():  # f(image) − f(blurred image), which the attributions must add up to
        total = float(g.objective(g.probs_from_image("image", px), g.target)
                      - g.objective(g.probs_from_image("image", blurred(px)), g.target))
    assert abs(heat.sum() - total) <= 0.05 * max(abs(total), 1e-2) + 1e-4


def test_kernel_shap_is_deterministic(image_case):
    a = image_attribution(image_case, "image", "kernel_shap").heat
    b = image_attribution(image_case, "image", "kernel_shap").heat
    c = image_attribution(image_case, "image", "kernel_shap", seed=1).heat
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("method", [m for m in IMAGE_METHODS if m not in ("integrated_gradients", "kernel_shap")])
def test_every_method_gives_a_map(image_case, method):
    heat, err, steps, _ = image_attribution(image_case, "image", method)
    assert heat.shape == image_case.image_pixels("image").shape[-2:] and np.isfinite(heat).all() and err == steps == 0
    assert np.abs(heat).sum() > 0
