"""On-device (batched) augmentation, checked against torchvision's per-image ops.

tests/data/test_views.py checks the whole pipeline against the PIL one under the same seeds, for every preset.
"""

import dataclasses

import pytest
import torch
import torch.nn.functional as tnf
from PIL import Image
from torchvision.transforms import functional as F

from s3l.data import device_augment as da
from tests.data.test_views import preset


@pytest.fixture
def views():
    torch.manual_seed(0)
    return torch.rand(5, 3, 12, 14)


def per_sample(factors):
    return torch.tensor(factors).view(-1, 1, 1, 1)


@pytest.mark.parametrize(
    ("ours", "reference", "factors"),
    [
        (da.adjust_brightness, F.adjust_brightness, [0.6, 0.9, 1.0, 1.2, 1.4]),
        (da.adjust_contrast, F.adjust_contrast, [0.6, 0.9, 1.0, 1.2, 1.4]),
        (da.adjust_saturation, F.adjust_saturation, [0.6, 0.9, 1.0, 1.2, 1.4]),
        (da.adjust_hue, F.adjust_hue, [-0.1, -0.03, 0.0, 0.05, 0.1]),
    ],
)
def test_each_jitter_op_with_per_sample_factors_equals_torchvision_per_image(views, ours, reference, factors):
    out = ours(views.clone(), per_sample(factors))
    for image, result, factor in zip(views, out, factors):
        torch.testing.assert_close(result, reference(image, factor), atol=1e-5, rtol=0)


def test_hsv_round_trip_is_the_identity(views):
    torch.testing.assert_close(da.hsv_to_rgb(da.rgb_to_hsv(views)), views, atol=1e-5, rtol=0)
    gray = views[:, :1].expand(-1, 3, -1, -1)  # no hue at all: stays gray
    torch.testing.assert_close(da.hsv_to_rgb(da.rgb_to_hsv(gray)), gray, atol=1e-6, rtol=0)


def rows(n, **columns):
    params = torch.zeros(n, da.PARAMS)
    for name, values in columns.items():
        column = getattr(da, name.upper())
        params[:, column] = torch.as_tensor(values, dtype=torch.float32)
    return params


def test_color_jitter_applies_the_four_ops_in_each_rows_own_order(views):
    orders = [[0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1], [1, 3, 0, 2], [0, 1, 2, 3]]
    factors = {"brightness": [1.3, 0.7, 1.1, 0.8, 1.4], "contrast": [0.8, 1.3, 0.6, 1.2, 1.4],
               "saturation": [1.2, 0.6, 1.4, 0.9, 0.6], "hue": [0.05, -0.1, 0.08, -0.02, 0.1]}
    params = rows(5, jitter=[1, 1, 1, 1, 0], **factors)
    params[:, da.ORDER] = torch.tensor(orders, dtype=torch.float32)
    out = da.color_jitter(views.clone(), params)
    ops = [F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue]
    names = ["brightness", "contrast", "saturation", "hue"]
    for i in range(4):
        expected = views[i]
        for op in orders[i]:
            expected = ops[op](expected, factors[names[op]][i])
        torch.testing.assert_close(out[i], expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(out[4], views[4])  # jitter flag off: untouched


def test_solarize_inverts_from_128_up_like_torchvision_per_image_on_uint8_images():
    torch.manual_seed(3)
    images = torch.randint(0, 256, (4, 3, 10, 12), dtype=torch.uint8)
    images[0].view(-1)[:256] = torch.arange(256, dtype=torch.uint8)  # every grey level, 127 and 128 included
    mask = torch.tensor([True, False, True, True])
    out = da.solarize(images.float() / 255, mask)
    assert out.dtype == torch.float32 and 0 <= out.min() and out.max() <= 1
    for image, result, selected in zip(images, out, mask):
        expected = F.solarize(image, 128) if selected else image
        assert torch.equal(result.mul(255).round().to(torch.uint8), expected)


def test_grayscale_blur_and_flip_touch_only_their_rows(views):
    gray = da.grayscale(views.clone(), torch.tensor([True, False, True, False, False]))
    torch.testing.assert_close(gray[0], F.rgb_to_grayscale(views[0], 3), atol=1e-6, rtol=0)
    torch.testing.assert_close(gray[1], views[1])
    flipped = da.flip(views.clone(), torch.tensor([False, True, False, False, True]))
    torch.testing.assert_close(flipped[1], views[1].flip(-1))
    torch.testing.assert_close(flipped[0], views[0])
    sigmas = torch.tensor([0.1, 2.0, 0.0, 1.3, 0.5])
    blurred = da.gaussian_blur(views.clone(), torch.tensor([True, True, False, True, False]), sigmas)
    radius = 6  # ceil(3 x the largest selected sigma, 2.0)
    for i in (0, 1, 3):
        expected = F.gaussian_blur(views[i], [2 * radius + 1] * 2, [float(sigmas[i])] * 2)
        torch.testing.assert_close(blurred[i], expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(blurred[2], views[2])


def crop_rows(boxes):
    return rows(len(boxes), top=[b[0] for b in boxes], left=[b[1] for b in boxes],
                height=[b[2] for b in boxes], width=[b[3] for b in boxes])


def test_resized_crops_cut_the_box_and_average_when_shrinking_interpolate_when_enlarging():
    torch.manual_seed(1)
    image = torch.rand(1, 3, 16, 20)
    same = da.resized_crops(image, crop_rows([(3, 5, 8, 8)]), 8)  # no resize: the pixels themselves
    torch.testing.assert_close(same[0], image[0, :, 3:11, 5:13])
    half = da.resized_crops(image, crop_rows([(0, 4, 16, 16)]), 8)  # 2x smaller: 2 x 2 block means
    torch.testing.assert_close(half[0], tnf.avg_pool2d(image[:, :, :, 4:20], 2)[0], atol=1e-6, rtol=0)
    double = da.resized_crops(image, crop_rows([(2, 2, 6, 6)]), 12)  # 2x larger: bilinear
    expected = tnf.interpolate(image[:, :, 2:8, 2:8], size=12, mode="bilinear", align_corners=False)
    # Inside; the outermost output pixels interpolate with the pixels just outside the box, where
    # crop-then-resize repeats the box's edge.
    torch.testing.assert_close(double[0, :, 1:-1, 1:-1], expected[0, :, 1:-1, 1:-1], atol=1e-6, rtol=0)


def test_collate_pads_by_repeating_edges_so_a_small_image_crops_the_same_alone_or_in_a_batch():
    torch.manual_seed(2)
    small = (torch.rand(3, 10, 7) * 255).to(torch.uint8)
    big = (torch.rand(3, 15, 18) * 255).to(torch.uint8)
    params = crop_rows([(4, 2, 6, 5), (0, 0, 10, 7)])  # the second box touches the bottom-right corner
    alone = da.collate_raw_views([((small, params), 3)], size=9)
    batched = da.collate_raw_views([((small, params), 3), ((big, params), 5)], size=9)
    assert batched.images.shape == (2, 3, 15, 18) and batched.labels.tolist() == [3, 5]
    torch.testing.assert_close(batched.images[0, :, :10, :7], small)
    assert (batched.images[0, :, 12, :7] == small[:, -1, :]).all()  # rows repeated
    assert (batched.images[0, :, :10, 15] == small[:, :, -1]).all()  # columns repeated
    (q_alone, k_alone), _ = da.realize_views(alone)
    (q_batch, k_batch), labels = da.realize_views(batched)
    torch.testing.assert_close(q_batch[0], q_alone[0])
    torch.testing.assert_close(k_batch[0], k_alone[0])
    assert q_batch.shape == (2, 3, 9, 9) and q_batch.dtype == torch.float32 and labels.tolist() == [3, 5]


def test_realize_views_passes_other_batches_through():
    batch = (torch.zeros(2, 3, 4, 4), torch.tensor([0, 1]))
    assert da.realize_views(batch) is batch


def test_each_view_draws_from_its_own_spec():
    moco, _ = preset("mocov2")
    never = dataclasses.replace(moco, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, flip_p=0.0)
    always = dataclasses.replace(moco, jitter_p=1.0, grayscale_p=1.0, blur_p=1.0, solarize_p=1.0, flip_p=1.0)
    torch.manual_seed(0)
    params = torch.stack([da.RawViewsTransform((never, always))(Image.new("RGB", (16, 12)))[1] for _ in range(20)])
    flags = [da.JITTER, da.GRAY, da.BLUR, da.SOLARIZE, da.FLIP]
    assert (params[:, 0, flags] == 0).all() and (params[:, 1, flags] == 1).all()
    assert (params[:, 0, da.SIGMA] == 0).all()
    assert ((params[:, 1, da.SIGMA] >= 0.1) & (params[:, 1, da.SIGMA] <= 2.0)).all()


def test_a_zero_jitter_strength_gives_a_neutral_factor():
    spec = dataclasses.replace(preset("mocov2")[0], jitter_p=1.0, jitter=(0.0, 0.4, 0.0, 0.0))
    torch.manual_seed(0)
    row = da.RawViewsTransform((spec, spec)).draw_view_params(torch.zeros(3, 8, 8, dtype=torch.uint8), 0)
    assert row[da.BRIGHTNESS] == 1 and row[da.SATURATION] == 1 and row[da.HUE] == 0
    assert 0.6 <= row[da.CONTRAST] <= 1.4 and row[da.CONTRAST] != 1
