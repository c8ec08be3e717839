"""The upstream augmentation and evaluation pipelines, on a real CUB photo."""

import random
from pathlib import Path

import pytest
import torch
import torchvision.transforms.functional as F
from PIL import Image, ImageFilter
from torchvision import transforms

from s3l.data.transforms import (
    PILGaussianBlur,
    TwoCropsTransform,
    eval_transform,
    finetune_train_transform,
    moco_v2_augmentation,
    random_resized_crop_train_transform,
)

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
        moco_v2_augmentation(size, 0.2, (0.1, 2.0)),
        finetune_train_transform(size),
        random_resized_crop_train_transform(size),
        eval_transform(size),
    ]
    for pipeline in pipelines:
        output = pipeline(photo)
        assert output.shape == (3, size, size) and output.dtype == torch.float32


def test_two_crops_are_query_and_key_that_differ(photo):
    torch.manual_seed(0)
    random.seed(0)
    views = TwoCropsTransform(moco_v2_augmentation(56, 0.2, (0.1, 2.0)))(photo)
    assert len(views) == 2
    assert views[0].shape == views[1].shape == (3, 56, 56)
    assert not torch.equal(views[0], views[1])


def test_moco_v2_augmentation_is_the_upstream_recipe():
    steps = moco_v2_augmentation(112, 0.2, (0.1, 2.0)).transforms
    crop, jitter, grayscale, blur, flip, to_tensor, normalize = steps
    assert isinstance(crop, transforms.RandomResizedCrop) and crop.size == (112, 112)
    assert crop.scale == (0.2, 1.0)
    assert jitter.p == 0.8 and isinstance(jitter.transforms[0], transforms.ColorJitter)
    color = jitter.transforms[0]
    assert (color.brightness, color.contrast, color.saturation, color.hue) == (
        (0.6, 1.4),
        (0.6, 1.4),
        (0.6, 1.4),
        (-0.1, 0.1),
    )
    assert isinstance(grayscale, transforms.RandomGrayscale) and grayscale.p == 0.2
    assert blur.p == 0.5 and isinstance(blur.transforms[0], PILGaussianBlur)
    assert blur.transforms[0].sigma == (0.1, 2.0)
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
