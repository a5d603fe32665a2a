import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bearcat.data.preprocess import ImageError, PreprocessConfig, load_image, preprocess
from tests.conftest import SHARED


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_larger_image_scaled_down_keeping_aspect_and_padded_grey():
    img = Image.new("RGB", (200, 50), (0, 0, 0))  # 4:1, wider than the 128x48 input
    out = preprocess(img, PreprocessConfig(height=48, width=128, channels=1))
    assert out.shape == (48, 128, 1) and out.dtype == np.uint8
    # scaled by 128/200 -> 128x32, centred: 8 grey rows above and below
    assert (out[:8] == 128).all() and (out[-8:] == 128).all()
    assert (out[8:40] == 0).all()


def test_smaller_image_not_enlarged_and_centred():
    img = Image.new("L", (20, 10), 0)
    out = preprocess(img, PreprocessConfig(height=48, width=128, channels=1))[..., 0]
    ys, xs = np.nonzero(out == 0)
    assert (ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) == (10, 20)
    assert ys.min() == 19 and xs.min() == 54


def test_rgb_and_threshold():
    img = Image.new("RGB", (10, 10), (200, 10, 10))
    rgb = preprocess(img, PreprocessConfig(height=10, width=10, channels=3))
    assert rgb.shape == (10, 10, 3) and tuple(rgb[5, 5]) == (200, 10, 10)
    gray = Image.new("L", (10, 10), 100)
    assert (preprocess(gray, PreprocessConfig(height=10, width=10, threshold=90)) == 255).all()
    assert (preprocess(gray, PreprocessConfig(height=10, width=10, threshold=101)) == 0).all()


def test_gray_min_keeps_pale_coloured_text_dark():
    """gray=min: yellow text on white is nearly white in luma, black in its darkest channel;
    grey input is unchanged, and an unknown mode is refused naming the key."""
    img = Image.new("RGB", (10, 10), (255, 255, 255))
    img.paste((255, 255, 0), (2, 2, 8, 8))
    luma = preprocess(img, PreprocessConfig(height=10, width=10))[..., 0]
    darkest = preprocess(img, PreprocessConfig(height=10, width=10, gray="min"))[..., 0]
    assert luma[5, 5] > 220 and darkest[5, 5] == 0 and darkest[0, 0] == 255
    gray = Image.new("L", (10, 10), 77)
    assert (preprocess(gray, PreprocessConfig(height=10, width=10, gray="min")) == 77).all()
    with pytest.raises(ValueError, match="preprocess.gray='max'"):
        PreprocessConfig(gray="max")


def test_gamma_darkens_a_pale_stroke_more_than_the_background():
    """gamma=3: a pastel stroke at 235 on a 253 background is pulled apart from it (200 on
    249); black, white and the padding stay; RGB gets the same curve per channel; threshold
    comes after it; a gamma of 0 or less, or not a number, is refused naming the key."""
    img = Image.new("L", (10, 6), 253)
    img.paste(235, (4, 0, 6, 6))
    img.paste(0, (0, 0, 1, 6))
    out = preprocess(img, PreprocessConfig(height=8, width=10, gamma=3))[..., 0]
    assert (out[1:7, 5] == 200).all() and (out[1:7, 8] == 249).all() and (out[1:7, 0] == 0).all()
    assert (out[0] == 128).all() and (out[7] == 128).all()  # padding rows: pad_value, untouched
    rgb = preprocess(Image.new("RGB", (4, 4), (235, 253, 255)), PreprocessConfig(height=4, width=4, channels=3, gamma=3))
    assert tuple(rgb[2, 2]) == (200, 249, 255)
    # 235 alone stays above a threshold of 210; after gamma 3 (200) it falls below
    assert (preprocess(Image.new("L", (4, 4), 235), PreprocessConfig(height=4, width=4, threshold=210)) == 255).all()
    assert (preprocess(Image.new("L", (4, 4), 235), PreprocessConfig(height=4, width=4, gamma=3, threshold=210)) == 0).all()
    for bad in (0, -1, "abc", True):
        with pytest.raises(ValueError, match=f"preprocess.gamma={bad!r}"):
            PreprocessConfig(gamma=bad)
    # a bundle written before the key existed prepares its images as before
    old = PreprocessConfig.from_dict({"height": 4, "width": 4, "channels": 1, "gray": "luma", "threshold": None})
    assert old.gamma == 1.0 and (preprocess(Image.new("L", (4, 4), 235), old) == 235).all()


def test_bad_whole_number_settings_are_refused_before_any_image():
    """Each would otherwise pass (a bool is an int, so threshold=true binarised at 1) or fail
    only on the first image, where it could pass for a bad image."""
    said = [("threshold", True, "preprocess.threshold=True: a whole number, from 0 to 255"),
            ("threshold", "abc", "preprocess.threshold=abc: a whole number, from 0 to 255"),
            ("threshold", 300, "preprocess.threshold=300: a whole number, from 0 to 255"),
            ("threshold", -1, "preprocess.threshold=-1: a whole number, from 0 to 255"),
            ("threshold", 128.5, "preprocess.threshold=128.5: a whole number, from 0 to 255"),
            ("pad_value", 300, "preprocess.pad_value=300: a whole number, from 0 to 255"),
            ("pad_value", "x", "preprocess.pad_value=x: a whole number, from 0 to 255"),
            ("pad_value", False, "preprocess.pad_value=False: a whole number, from 0 to 255"),
            ("height", 0, "preprocess.height=0: a whole number, 1 or more"),
            ("height", 48.5, "preprocess.height=48.5: a whole number, 1 or more"),
            ("height", True, "preprocess.height=True: a whole number, 1 or more"),
            ("width", 0, "preprocess.width=0: a whole number, 1 or more"),
            # text that reads as a number (a quoted YAML value) is shown quoted, or it would look fine
            ("width", "128", "preprocess.width='128': a whole number, 1 or more"),
            ("max_pixels", 0, "preprocess.max_pixels=0: a whole number, 1 or more"),
            ("channels", True, "preprocess.channels=True: use 1 (grayscale) or 3 (RGB)"),
            ("channels", 2, "preprocess.channels=2: use 1 (grayscale) or 3 (RGB)"),
            ("channels", 1.0, "preprocess.channels=1.0: use 1 (grayscale) or 3 (RGB)")]
    for key, value, message in said:  # a list: True, 1 and 1.0 are one dict key
        with pytest.raises(ValueError) as raised:
            PreprocessConfig(**{key: value})
        assert str(raised.value) == message
    fine = PreprocessConfig(height=np.int64(8), width=8, threshold=0, pad_value=255, gamma=2)
    assert preprocess(Image.new("L", (8, 8), 10), fine).shape == (8, 8, 1)


def test_alpha_palette_and_16bit_inputs():
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))  # fully transparent -> white
    assert (preprocess(png_bytes(rgba), PreprocessConfig(height=8, width=8)) == 255).all()
    pal = Image.new("P", (8, 8), 0)
    pal.putpalette([10, 20, 30] * 256)
    assert preprocess(png_bytes(pal), PreprocessConfig(height=8, width=8, channels=3))[0, 0].tolist() == [10, 20, 30]
    deep = Image.fromarray(np.full((8, 8), 65535, np.uint16))
    assert (preprocess(png_bytes(deep), PreprocessConfig(height=8, width=8)) == 255).all()


def test_same_result_from_path_bytes_and_image(tmp_path):
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (60, 160, 3), dtype=np.uint8))
    path = tmp_path / "AB12_x.png"
    img.save(path)
    cfg = PreprocessConfig()
    a, b, c = preprocess(path, cfg), preprocess(path.read_bytes(), cfg), preprocess(Image.open(path), cfg)
    assert (a == b).all() and (a == c).all()


def test_bad_images_name_the_file(tmp_path):
    empty = tmp_path / "AB_empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match="AB_empty.png.*0 bytes"):
        load_image(empty)
    text = tmp_path / "AB_text.png"
    text.write_text("not an image")
    with pytest.raises(ImageError, match="AB_text.png.*cannot decode"):
        load_image(text)
    good = tmp_path / "AB_trunc.jpg"
    Image.new("RGB", (64, 64), "red").save(good)
    good.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ImageError, match="AB_trunc.jpg"):
        load_image(good)
    big = Image.new("L", (100, 100))
    with pytest.raises(ImageError, match="exceeds the limit"):
        load_image(png_bytes(big), max_pixels=5000)
    big_file = tmp_path / "AB_big.png"
    big.save(big_file)
    with pytest.raises(ImageError, match="AB_big.png.*exceeds the limit"):
        load_image(big_file, max_pixels=5000)
    # a failed load leaves no file open (checking a folder meets many bad files)
    import os

    fds = Path("/proc/self/fd")
    open_files = {os.path.realpath(fds / fd) for fd in os.listdir(fds)}
    assert not open_files & {str(p.resolve()) for p in (text, good, big_file)}


def animation(frames: list[Image.Image], fmt: str) -> bytes:
    buf = io.BytesIO()
    extra = {"lossless": True} if fmt == "WEBP" else {}
    frames[0].save(buf, format=fmt, save_all=True, append_images=frames[1:], duration=100, loop=0, **extra)
    return buf.getvalue()


def blinking_frames() -> list[Image.Image]:
    """Three 12 x 4 frames on white: a black block on the left in frames 1-2, one on the
    right in frames 2-3, a grey dot in frame 3 only."""
    frames = []
    for left, right, dot in ((True, False, False), (True, True, False), (False, True, True)):
        arr = np.full((4, 12, 3), 255, np.uint8)
        if left:
            arr[:, 0:3] = 0
        if right:
            arr[:, 9:12] = 0
        if dot:
            arr[1, 6] = 128
        frames.append(Image.fromarray(arr))
    return frames


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP"])  # PNG: an APNG
def test_animated_frames_are_merged_pixel_by_pixel(tmp_path, fmt):
    data = animation(blinking_frames(), fmt)
    assert Image.open(io.BytesIO(data)).n_frames == 3

    def read(frames, source=data):
        return preprocess(source, PreprocessConfig(height=4, width=12, frames=frames))[..., 0]

    first, darkest, lightest, median = (read(f) for f in ("first", "darkest", "lightest", "median"))
    assert (first == read("first", png_bytes(blinking_frames()[0]))).all()  # what PIL shows: frame 1
    assert first[:, :3].max() == 0 and first[:, 3:].min() == 255
    assert darkest[:, :3].max() == 0 and darkest[:, 9:].max() == 0 and darkest[1, 6] == 128
    assert (np.delete(darkest[:, 3:9], 3, axis=1) == 255).all() and darkest[0, 6] == 255
    assert (lightest == 255).all()  # nothing shows in every frame
    assert median[:, :3].max() == 0 and median[:, 9:].max() == 0 and (median[:, 3:9] == 255).all()  # the dot is gone
    path = tmp_path / f"AB_blink.{fmt.lower()}"
    path.write_bytes(data)
    assert (read("darkest", path) == darkest).all() and (read("darkest", Image.open(path)) == darkest).all()
    # a still image reads the same whatever the setting
    still = png_bytes(blinking_frames()[1])
    assert all((read(f, still) == read("first", still)).all() for f in ("darkest", "lightest", "median"))


def test_frame_settings_and_limits_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"preprocess.frames='union': choose one of first, darkest, lightest, median"):
        PreprocessConfig(frames="union")
    path = tmp_path / "AB_many.gif"
    path.write_bytes(animation(blinking_frames(), "GIF"))
    # one frame of 12 x 4 fits in 100 pixels, three do not
    assert preprocess(path, PreprocessConfig(height=4, width=12, max_pixels=100)).shape == (4, 12, 1)
    with pytest.raises(ImageError, match=r"AB_many.gif: 3 frames of 12x4 pixels exceed the limit of 100"):
        preprocess(path, PreprocessConfig(height=4, width=12, max_pixels=100, frames="darkest"))
    # a file cut in its last frame: the first frame still reads, the merge names the file
    cut = tmp_path / "AB_cut.gif"
    cut.write_bytes(path.read_bytes()[:-12])
    assert preprocess(cut, PreprocessConfig(height=4, width=12)).shape == (4, 12, 1)
    with pytest.raises(ImageError, match=r"AB_cut.gif: cannot decode frame 3 of 3 \(OSError: image file is truncated"):
        preprocess(cut, PreprocessConfig(height=4, width=12, frames="median"))


def test_images_much_wider_than_the_input_are_named_with_the_width_that_fits(tmp_path, caplog):
    """A 300 x 50 captcha in the default 96 x 36 input is read 16 pixels high, without a word."""
    from bearcat.data.pipeline import read_headers, warn_if_squeezed

    sizes = [(300, 50)] * 5 + [(100, 35)]  # the median: 300 x 50
    samples = []
    for i, size in enumerate(sizes):
        Image.new("L", size, 255).save(tmp_path / f"ab{i}_x.png")
        samples.append((str(tmp_path / f"ab{i}_x.png"), "ab"))
    with caplog.at_level("WARNING", logger="bearcat.data.pipeline"):
        said = warn_if_squeezed(read_headers(samples), PreprocessConfig(height=36, width=96))
    assert said == ("the images' median size is 300 x 50: the input, preprocess.width=96 x preprocess.height=36, "
                    "reads them at 16 pixels high; preprocess.width=224 keeps their shape at this height "
                    "(python -m bearcat.prepare action=check recommends a size)")
    assert [r.getMessage() for r in caplog.records] == [said]
    assert preprocess(samples[0][0], PreprocessConfig(height=36, width=224)).shape == (36, 224, 1)
    assert warn_if_squeezed(read_headers(samples), PreprocessConfig(height=36, width=224)) is None  # the width named fits
    swust = sorted((SHARED / "swust_cas_20200226").iterdir())[:50]  # 90 x 30 in 96 x 36: as they are
    assert warn_if_squeezed(read_headers([(str(p), "") for p in swust]), PreprocessConfig(height=36, width=96)) is None
