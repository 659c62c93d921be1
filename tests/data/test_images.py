"""Every awkward file a clinic archive holds either decodes correctly or fails with a stable reason."""

import io

import numpy as np
import pytest
from PIL import Image

from skinray.config import ImageConfig
from skinray.data import images

CFG = ImageConfig(size=64)


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def rgb(w=80, h=60, color=(200, 120, 90)) -> Image.Image:
    return Image.new("RGB", (w, h), color)


@pytest.mark.parametrize("data", [
    encode(rgb(), "JPEG"),
    encode(rgb().convert("L"), "JPEG"),
    encode(rgb().convert("CMYK"), "JPEG"),
    encode(rgb().convert("RGBA"), "PNG"),
    encode(rgb().convert("P"), "PNG"),
    encode(Image.fromarray((np.arange(80 * 60).reshape(60, 80) * 13 % 65535).astype(np.uint16)), "PNG"),
], ids=["rgb-jpeg", "gray-jpeg", "cmyk-jpeg", "rgba-png", "palette-png", "16bit-png"])
def test_valid_variants_decode_to_rgb_uint8(data):
    arr = images.decode(data, CFG)
    assert arr.shape == (64, 64, 3) and arr.dtype == np.uint8
    assert images.check(data, CFG)[0] is None


def test_16bit_is_scaled_not_clipped():
    arr16 = np.full((40, 40), 40000, np.uint16)
    arr = images.decode(encode(Image.fromarray(arr16), "PNG"), CFG)
    assert abs(int(arr[0, 0, 0]) - round(40000 / 65535 * 255)) <= 1


def test_alpha_is_composited_on_black():
    img = Image.new("RGBA", (40, 40), (255, 255, 255, 0))
    assert images.decode(encode(img, "PNG"), CFG).max() == 0


@pytest.mark.parametrize("data, reason", [
    (b"", "empty"),
    (b"hello, this is text" * 10, "not_image"),
    (encode(rgb(400, 300), "JPEG")[:600], "undecodable"),
], ids=["zero-byte", "text", "truncated"])
def test_bad_files_have_reasons(data, reason):
    with pytest.raises(images.ImageError) as err:
        images.decode(data, CFG)
    assert err.value.reason == reason
    assert images.check(data, CFG)[0] == reason


def test_decompression_bomb_is_refused_before_decoding():
    bomb = encode(Image.new("L", (5000, 5000)), "PNG")  # small file, 25 M pixels
    small = ImageConfig(size=64, max_pixels=10_000_000)
    with pytest.raises(images.ImageError) as err:
        images.decode(bomb, small)
    assert err.value.reason == "too_many_pixels"


def test_too_large_file():
    data = encode(rgb(), "JPEG")
    with pytest.raises(images.ImageError) as err:
        images.decode(data, ImageConfig(size=64, max_bytes=10))
    assert err.value.reason == "too_large"


def test_resize_modes_keep_geometry():
    img = Image.new("RGB", (200, 100), (0, 0, 0))
    img.paste((255, 255, 255), (50, 0, 150, 100))  # a white centre square
    data = encode(img, "PNG")
    crop = images.decode(data, ImageConfig(size=32, resize="center_crop"))
    pad = images.decode(data, ImageConfig(size=32, resize="pad"))
    squash = images.decode(data, ImageConfig(size=32, resize="squash"))
    assert crop.mean() > 250  # the crop is the white square
    assert pad[0].max() == 0 and pad[16, 16].min() > 250  # black bars top and bottom
    assert squash[16, 0].max() == 0 and squash[16, 16].min() > 250


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (80, 40), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 40, 40))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise when displayed
    arr = images.decode(encode(img, "JPEG", exif=exif), ImageConfig(size=32))
    assert arr[2, 16, 2] > 150  # blue ends up on top


def test_same_bytes_same_pixels_everywhere():
    data = encode(rgb(123, 77, (10, 200, 30)), "JPEG")
    assert np.array_equal(images.decode(data, CFG), images.decode(data, CFG))
    from skinray.model.artifact import Preprocessing

    guards = ImageConfig(max_pixels=1000, max_bytes=99)  # a run's own limits win over anything in the model
    cfg = Preprocessing.from_config(CFG).image_config(guards)
    assert (cfg.size, cfg.resize, cfg.max_pixels, cfg.max_bytes) == (CFG.size, CFG.resize, 1000, 99)


def test_shades_of_gray_removes_a_colour_cast_and_keeps_grey_images():
    rng = np.random.default_rng(0)
    grey = rng.uniform(40, 200, (32, 32, 1)).repeat(3, axis=2).astype(np.uint8)
    assert np.abs(images.shades_of_gray(grey).astype(int) - grey).max() <= 1  # nothing to correct
    cast = np.clip(grey * np.array([1.3, 0.8, 0.7]), 0, 255).astype(np.uint8)  # a reddish dermoscope
    fixed = images.shades_of_gray(cast).astype(np.float64) / 255.0
    p_means = np.power(np.mean(fixed.reshape(-1, 3) ** 6, axis=0), 1 / 6)
    assert p_means.max() - p_means.min() < 0.01  # the illuminant estimate is grey afterwards
    assert images.shades_of_gray(cast).dtype == np.uint8
    no_blue = cast.copy()
    no_blue[..., 2] = 0
    assert np.array_equal(images.shades_of_gray(no_blue), no_blue)  # a black channel: left as it is


def test_colour_constancy_is_part_of_the_model_preprocessing():
    from skinray.model.artifact import Preprocessing

    data = encode(rgb(40, 32, (200, 120, 100)), "PNG")
    cc = ImageConfig(size=32, resize="squash", color_constancy="shades_of_gray")
    plain = images.decode(data, ImageConfig(size=32, resize="squash"))
    assert np.array_equal(images.decode(data, cc), images.shades_of_gray(plain))
    spec = Preprocessing.from_config(cc)
    assert spec.color_constancy == "shades_of_gray"
    assert spec.image_config(ImageConfig()).color_constancy == "shades_of_gray"  # scoring decodes as training did
    assert Preprocessing(size=32, resize="squash").color_constancy == "none"  # models written before it


@pytest.mark.parametrize("shape", [(224, 224, 3), (7, 5, 3), (512, 384, 3)])
def test_mean_color_is_the_exact_channel_mean(shape):
    arr = np.random.default_rng(sum(shape)).integers(0, 256, size=shape, dtype=np.uint8)
    arr[0, 0] = 255  # a saturated corner: no overflow in the sums
    np.testing.assert_array_equal(images.mean_color(arr), arr.reshape(-1, 3).mean(axis=0))
    assert images.mean_color(np.full(shape, 255, np.uint8)).tolist() == [255.0, 255.0, 255.0]


def test_a_row_error_is_its_reason_then_its_detail_and_reads_back_as_its_reason():
    import pandas as pd

    assert images.row_error("missing", "no image URI") == "missing: no image URI"
    assert images.row_error("empty") == "empty"
    assert str(images.ImageError("undecodable", "OSError: x: y")) == images.row_error("undecodable", "OSError: x: y")
    errors = pd.Series([images.row_error("undecodable", "OSError: x: y"), None, "empty", float("nan")], dtype=object)
    reasons = images.error_reasons(errors)
    assert reasons[[0, 2]].tolist() == ["undecodable", "empty"] and reasons[[1, 3]].isna().all()
    assert images.error_reasons(pd.Series([None, None])).isin(images.RETRYABLE_REASONS).tolist() == [False, False]
