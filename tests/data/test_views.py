"""The view presets (configs/augmentation/*.yaml): checked on load, and drawn alike on all three data paths."""

import dataclasses
import random
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from PIL import Image
from torchvision import transforms
from torchvision.transforms.functional import pil_to_tensor

from s3l.data import device_augment as da
from s3l.data.cache import fast_view_transform, normalize_uint8
from s3l.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MultiViewTransform,
    PILGaussianBlur,
    view_transform,
)
from s3l.data.views import ViewSpec, smallest_min_scale, view_specs
from s3l.errors import S3LError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
CUB = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "cub_200_2011_10cls" / "CUB_200_2011"
PRESETS = ("mocov2", "byol")
STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)


def preset_node(name: str):
    return OmegaConf.load(CONFIGS / "augmentation" / f"{name}.yaml")


def preset(name: str) -> tuple[ViewSpec, ViewSpec]:
    """The two views of configs/augmentation/<name>.yaml."""
    return view_specs(preset_node(name))


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    path = sorted((CUB / "images").rglob("*.jpg"))[0]
    with Image.open(path) as image:
        return image.convert("RGB").resize((150, 112), Image.Resampling.BILINEAR)


def test_mocov2_preset_is_aug_plus_twice():
    view1, view2 = preset("mocov2")
    assert view1 == view2 == ViewSpec(min_scale=0.2, jitter_p=0.8, jitter=(0.4, 0.4, 0.4, 0.1), grayscale_p=0.2,
                                      blur_p=0.5, blur_sigma=(0.1, 2.0), solarize_p=0.0, flip_p=0.5)


def test_byol_preset_is_the_papers_asymmetric_pair():
    view1, view2 = preset("byol")
    common = {"min_scale": 0.08, "jitter_p": 0.8, "jitter": (0.4, 0.4, 0.2, 0.1), "grayscale_p": 0.2,
              "blur_sigma": (0.1, 2.0), "flip_p": 0.5}
    assert view1 == ViewSpec(**common, blur_p=1.0, solarize_p=0.0)
    assert view2 == ViewSpec(**common, blur_p=0.1, solarize_p=0.2)
    assert smallest_min_scale(preset("byol")) == 0.08 and smallest_min_scale(preset("mocov2")) == 0.2


def test_hydra_composes_a_preset_and_an_override_changes_one_view_only():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(overrides=["+augmentation=mocov2", "augmentation.view1.blur_p=0.25",
                                 "augmentation.view2.blur_sigma=[0.5,1.0]"])
    GlobalHydra.instance().clear()
    view1, view2 = view_specs(cfg.augmentation)
    assert (view1.blur_p, view1.blur_sigma) == (0.25, (0.1, 2.0))
    assert (view2.blur_p, view2.blur_sigma) == (0.5, (0.5, 1.0))
    assert dataclasses.replace(view1, blur_p=0.5, blur_sigma=(0.5, 1.0)) == view2


def _set(key, value):
    return lambda node: OmegaConf.update(node, key, value)


def _delete(parent, key):
    return lambda node: OmegaConf.select(node, parent).pop(key)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_set("view1.blur_p", 1.5), "augmentation.view1.blur_p=1.5 must be in [0, 1]"),
        (_set("view2.min_scale", 0), "augmentation.view2.min_scale=0 must be in (0, 1]"),
        (_set("view1.jitter", [0.4, 0.4, 0.4]), "augmentation.view1.jitter=[0.4, 0.4, 0.4] must be a list of 4 items"),
        (_set("view1.jitter", [0.4, 0.4, 0.4, 0.6]), "augmentation.view1.jitter[3]=0.6 must be in [0, 0.5]"),
        (_set("view2.solarize_p", "often"), "augmentation.view2.solarize_p=often must be a number"),
        (_set("view1.blur_sigma", [2.0, 0.1]), "augmentation.view1.blur_sigma=[2.0, 0.1] must be [low, high] with "
                                               "low <= high"),
        (_set("view1.cutout_p", 0.5), "augmentation.view1.cutout_p is not a setting of augmentation.view1; valid: "
                                      "min_scale, jitter_p, jitter, grayscale_p, blur_p, blur_sigma, solarize_p, "
                                      "flip_p"),
        (_delete("view2", "flip_p"), "augmentation.view2.flip_p is not set: add it to the config or pass "
                                     "augmentation.view2.flip_p=<value>"),
        (_delete("", "view2"), "augmentation.view2 is not set"),
    ],
)
def test_view_specs_refuse_a_bad_value_in_one_line_naming_the_key(change, message):
    node = preset_node("byol")
    change(node)
    with pytest.raises(S3LError) as error:
        view_specs(node)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


# The three data paths of one image's two views, each run from the same seeds: (views, torch RNG state,
# Python RNG state), and the drawn parameters on the device path.
def seeded(seed: int, make):
    torch.manual_seed(seed)
    random.seed(seed)
    made = make()
    return made, torch.get_rng_state(), random.getstate()


def pil_path(image, views, seed, size):
    transform = MultiViewTransform([view_transform(size, spec) for spec in views])
    return seeded(seed, lambda: torch.stack(transform(image)))


def fast_path(image, views, seed, size):
    transform = MultiViewTransform([fast_view_transform(size, spec) for spec in views])
    pixels, *state = seeded(seed, lambda: torch.stack(transform(image)))
    assert pixels.dtype == torch.uint8
    return normalize_uint8(pixels), *state


def device_path(image, views, seed, size):
    sample, *state = seeded(seed, lambda: da.RawViewsTransform(views)(image))
    (view1, view2), _ = da.realize_views(da.collate_raw_views([(sample, 0)], size))
    return torch.cat([view1, view2]), *state, sample[1]


@pytest.mark.parametrize("name", PRESETS)
@pytest.mark.parametrize("size", [32, 56])
def test_every_preset_draws_the_same_views_on_the_three_data_paths(photo, name, size):
    """The RNGs end in the same state on every path; the fast path gives the PIL path's pixels; the device
    path gives nearly them (its filters differ)."""
    views = preset(name)
    errors, other_seed, params = [], [], []
    for seed in range(10):
        pil, torch_state, py_state = pil_path(photo, views, seed, size)
        assert pil.shape == (2, 3, size, size)
        fast, *fast_state = fast_path(photo, views, seed, size)
        device, *device_state, drawn = device_path(photo, views, seed, size)
        for state in (fast_state, device_state):
            assert torch.equal(state[0], torch_state) and state[1] == py_state
        torch.testing.assert_close(fast, pil, atol=1e-5, rtol=0)  # one grey level is 0.017 here
        errors.append((device - pil).mul(STD).abs().mean().item())  # in [0, 1] pixel units
        other_seed.append((device_path(photo, views, seed + 100, size)[0] - pil).mul(STD).abs().mean().item())
        params.append(drawn)
    # Every operation a view has was drawn at least once over these seeds, so each was compared.
    applied = torch.stack(params).amax(dim=0)
    for view, spec in zip(applied, views):
        for op, column in COLUMN.items():
            assert bool(view[column]) == (getattr(spec, f"{op}_p") > 0), (op, view)
    # Resize and blur filters differ (roi_align area sampling vs PIL's triangle filter, a true Gaussian vs
    # PIL's box approximation) and PIL rounds to uint8 after each step: measured 0.4 to 0.9% of the pixel
    # range on average for both presets, where views of other draws differ by 8% or more.
    assert max(errors) < 0.02, errors
    assert min(other_seed) > 3 * max(errors), (errors, other_seed)


# Each operation of a view written out with torchvision, as the old MoCo v2 code wrote them.
def torchvision_view(size: int, spec: ViewSpec, leave_out: str) -> transforms.Compose:
    ops = {
        "crop": transforms.RandomResizedCrop(size, scale=(spec.min_scale, 1.0)),
        "jitter": transforms.RandomApply([transforms.ColorJitter(*spec.jitter)], p=spec.jitter_p),
        "grayscale": transforms.RandomGrayscale(p=spec.grayscale_p),
        "blur": transforms.RandomApply([PILGaussianBlur(spec.blur_sigma)], p=spec.blur_p),
        "solarize": transforms.RandomSolarize(threshold=128, p=spec.solarize_p),
        "flip": transforms.RandomHorizontalFlip(p=spec.flip_p),
    }
    return transforms.Compose([op for name, op in ops.items() if name != leave_out]
                              + [transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


COLUMN = {"jitter": da.JITTER, "grayscale": da.GRAY, "blur": da.BLUR, "solarize": da.SOLARIZE, "flip": da.FLIP}


@pytest.mark.parametrize("op", list(COLUMN))
def test_an_operation_with_probability_0_is_left_out_and_draws_nothing(photo, op):
    spec = dataclasses.replace(preset("byol")[1], **{f"{op}_p": 0.0})  # BYOL's view2 has every operation
    pixels = pil_to_tensor(photo)
    for seed in range(3):
        expected, *expected_state = seeded(seed, lambda: torchvision_view(32, spec, leave_out=op)(photo))
        view, *state = seeded(seed, lambda: view_transform(32, spec)(photo))
        assert torch.equal(view, expected)
        assert torch.equal(state[0], expected_state[0]) and state[1] == expected_state[1]
        row, *device_state = seeded(seed, lambda: da.RawViewsTransform((spec, spec)).draw_view_params(pixels, 0))
        assert torch.equal(device_state[0], expected_state[0]) and device_state[1] == expected_state[1]
        assert row[COLUMN[op]] == 0
        # Kept in with p=0, torchvision's op would still draw its number: the RNG would end elsewhere.
        _, *drawn_state = seeded(seed, lambda: torchvision_view(32, spec, leave_out="")(photo))
        assert not torch.equal(drawn_state[0], expected_state[0])


def test_byol_view1_always_blurs_never_solarizes_and_view2_rarely_blurs_sometimes_solarizes():
    views = preset("byol")
    torch.manual_seed(0)
    random.seed(0)
    draw = da.RawViewsTransform(views)
    params = torch.stack([draw(Image.new("RGB", (12, 10)))[1] for _ in range(400)])  # (400, 2, PARAMS)
    view1, view2 = params[:, 0], params[:, 1]
    assert view1[:, da.BLUR].all() and not view1[:, da.SOLARIZE].any()
    # 400 draws: the standard deviation of the rate is 0.015 at p=0.1, 0.02 at p=0.2.
    assert abs(view2[:, da.BLUR].mean().item() - 0.1) < 0.05
    assert abs(view2[:, da.SOLARIZE].mean().item() - 0.2) < 0.06
    assert ((view1[:, da.SIGMA] >= 0.1) & (view1[:, da.SIGMA] <= 2.0)).all()
    # The PIL path: view1 blurs with p=1 and has no solarize step; view2 solarizes with p=0.2.
    ops1, ops2 = (view_transform(32, spec).transforms for spec in views)
    assert [op.p for op in ops1 if isinstance(op, transforms.RandomApply)] == [0.8, 1.0]
    assert not any(isinstance(op, transforms.RandomSolarize) for op in ops1)
    (solarize,) = [op for op in ops2 if isinstance(op, transforms.RandomSolarize)]
    assert (solarize.threshold, solarize.p) == (128, 0.2)
