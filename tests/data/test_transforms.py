"""The pretraining views and the upstream evaluation pipelines, on a real CUB photo."""

import random
from pathlib import Path

import pytest
import torch
import torchvision.transforms.functional as F
from PIL import Image, ImageFilter
from torchvision import transforms

from s3l.data.transforms import (
    MultiViewTransform,
    PILGaussianBlur,
    eval_transform,
    finetune_train_transform,
    random_resized_crop_train_transform,
    view_transform,
)
from tests.data.test_views import preset

PHOTO = (
    Path(__file__).resolve().parents[3]
    / "shared/datasets/cub_200_2011_10cls/CUB_200_2011/images/001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg"
)
MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


@pytest.fixture(scope="module")
def photo():
    with Image.open(PHOTO) as image:
        return image.convert("RGB")


@pytest.mark.parametrize("size", [16, 56, 112, 224])
def test_every_pipeline_gives_size_by_size_tensors(photo, size):
    pipelines = [
        *(view_transform(size, spec) for spec in preset("byol")),
        finetune_train_transform(size),
        random_resized_crop_train_transform(size),
        eval_transform(size),
    ]
    for pipeline in pipelines:
        output = pipeline(photo)
        assert output.shape == (3, size, size) and output.dtype == torch.float32


def test_multi_view_transform_makes_one_view_per_transform_in_order(photo):
    views = MultiViewTransform([view_transform(56, spec) for spec in preset("byol")])
    torch.manual_seed(0)
    random.seed(0)
    view1, view2 = views(photo)
    assert view1.shape == view2.shape == (3, 56, 56) and not torch.equal(view1, view2)
    torch.manual_seed(0)
    random.seed(0)
    assert torch.equal(views.transforms[0](photo), view1)
    assert torch.equal(views.transforms[1](photo), view2)


def upstream_moco_v2_view(size: int) -> transforms.Compose:
    """The MoCo v2 ("aug-plus") view as upstream and this project's previous `moco_v2_augmentation` wrote it."""
    return transforms.Compose([
        transforms.RandomResizedCrop(size, scale=(0.2, 1.0)),
        transforms.RandomApply([transforms.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        transforms.RandomGrayscale(p=0.2),
        transforms.RandomApply([PILGaussianBlur((0.1, 2.0))], p=0.5),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(MEAN, STD),
    ])


@pytest.mark.parametrize("size", [32, 112])
def test_mocov2_preset_gives_exactly_the_upstream_views(photo, size):
    """MoCo's data did not change: the same seed gives the very pixels of the upstream two-crops transform."""
    upstream = upstream_moco_v2_view(size)
    preset_views = MultiViewTransform([view_transform(size, spec) for spec in preset("mocov2")])
    for seed in range(6):
        torch.manual_seed(seed)
        random.seed(seed)
        expected = [upstream(photo), upstream(photo)]
        expected_state = torch.get_rng_state(), random.getstate()
        torch.manual_seed(seed)
        random.seed(seed)
        views = preset_views(photo)
        assert torch.equal(views[0], expected[0]) and torch.equal(views[1], expected[1])
        assert torch.equal(torch.get_rng_state(), expected_state[0]) and random.getstate() == expected_state[1]


def test_view_transform_applies_the_spec_in_the_canonical_order():
    spec = preset("byol")[1]
    crop, jitter, grayscale, blur, solarize, flip, to_tensor, normalize = view_transform(112, spec).transforms
    assert isinstance(crop, transforms.RandomResizedCrop) and crop.size == (112, 112)
    assert crop.scale == (0.08, 1.0) and crop.ratio == (3 / 4, 4 / 3)
    assert jitter.p == 0.8 and isinstance(jitter.transforms[0], transforms.ColorJitter)
    color = jitter.transforms[0]
    assert (color.brightness, color.contrast, color.saturation, color.hue) == (
        (0.6, 1.4),
        (0.6, 1.4),
        (0.8, 1.2),
        (-0.1, 0.1),
    )
    assert isinstance(grayscale, transforms.RandomGrayscale) and grayscale.p == 0.2
    assert blur.p == 0.1 and isinstance(blur.transforms[0], PILGaussianBlur)
    assert blur.transforms[0].sigma == (0.1, 2.0)
    assert isinstance(solarize, transforms.RandomSolarize) and (solarize.threshold, solarize.p) == (128, 0.2)
    assert isinstance(flip, transforms.RandomHorizontalFlip) and flip.p == 0.5
    assert isinstance(to_tensor, transforms.ToTensor)
    assert list(normalize.mean) == MEAN and list(normalize.std) == STD


def test_pil_gaussian_blur_uses_pil_radius_drawn_from_sigma(photo):
    assert (
        PILGaussianBlur((1.5, 1.5))(photo).tobytes() == photo.filter(ImageFilter.GaussianBlur(1.5)).tobytes()
    )
    random.seed(3)
    radius = random.uniform(0.1, 2.0)
    random.seed(3)
    blurred = PILGaussianBlur((0.1, 2.0))(photo)
    assert blurred.tobytes() == photo.filter(ImageFilter.GaussianBlur(radius)).tobytes()


@pytest.mark.parametrize(("size", "side"), [(224, 256), (112, 128), (56, 64)])
def test_resize_side_is_size_over_0_875(size, side):
    assert finetune_train_transform(size).transforms[0].size == side
    assert eval_transform(size).transforms[0].size == side


def test_finetune_train_transform_is_resize_flip_random_crop():
    resize, flip, crop, _, _ = finetune_train_transform(224).transforms
    assert isinstance(resize, transforms.Resize) and isinstance(flip, transforms.RandomHorizontalFlip)
    assert isinstance(crop, transforms.RandomCrop) and crop.size == (224, 224)


def test_random_resized_crop_transform_uses_default_scale():
    crop = random_resized_crop_train_transform(224).transforms[0]
    assert isinstance(crop, transforms.RandomResizedCrop) and crop.scale == (0.08, 1.0)


def test_eval_transform_is_deterministic_resize_and_center_crop(photo):
    pipeline = eval_transform(112)
    # The short side goes to 128 and the aspect ratio is kept, then the central 112x112 is cut.
    width, height = photo.size
    assert F.resize(photo, 128).size == (int(128 * width / height), 128)
    expected = F.normalize(F.to_tensor(F.center_crop(F.resize(photo, 128), 112)), MEAN, STD)
    assert torch.equal(pipeline(photo), expected)
    assert torch.equal(pipeline(photo), pipeline(photo))
