"""Augmentation from conf/augmentation/*.yaml: built with albumentations, run inside
tf.data on the training split only, shape-preserving, extensible from YAML alone."""
import mlflow
import numpy as np
import pytest

from bearcat.data.augment import build_augment
from bearcat.data.pipeline import load_split, make_dataset
from bearcat.data.preprocess import PreprocessConfig
from bearcat.data.sources import folder
from bearcat.train import train


def real_images(swust, n=16, channels=1):
    samples = folder(str(swust), val_ratio=0.0, test_ratio=0.0).train[:n]
    return load_split(samples, PreprocessConfig(channels=channels), None).images


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", ["light", "heavy"])
def test_presets_change_pixels_keep_shape(make_cfg, swust_copy, name, channels):
    cfg = make_cfg([f"augmentation={name}", f"preprocess.channels={channels}"])
    aug = build_augment(cfg.augmentation, seed=0)
    images = real_images(swust_copy, channels=channels)
    out = aug.apply_batch(images)
    assert out.shape == images.shape and out.dtype == np.uint8
    changed = [not np.array_equal(a, b) for a, b in zip(images, out)]
    assert sum(changed) >= len(images) // 2  # most images are altered...
    diff = np.abs(out.astype(int) - images).mean()
    assert 1.0 < diff < 60.0  # ...but stay the same captcha, not noise
    assert build_augment(make_cfg(["augmentation=none"]).augmentation) is None


def test_augments_inside_tf_data_keeping_image_target_pairs(make_cfg, swust_copy):
    images = real_images(swust_copy, n=40)
    targets = np.arange(len(images), dtype=np.int32)
    aug = build_augment(make_cfg(["augmentation=light"]).augmentation, seed=1)
    batches = list(make_dataset(images, targets, batch_size=16, augment=aug))
    x = np.concatenate([b[0].numpy() for b in batches])
    y = np.concatenate([b[1].numpy() for b in batches])
    assert x.shape == (40, 48, 128, 1) and x.dtype == np.float32
    assert sorted(y.tolist()) == targets.tolist()  # every target kept once
    assert np.abs(x[np.argsort(y)] - images).mean() > 1.0  # and the images were augmented

    # a mild transform, so each output must still be nearest its own input: pairs never mix up
    mild = make_cfg(["augmentation.transforms=[{_target_: albumentations.RandomBrightnessContrast, "
                     "brightness_limit: 0.05, contrast_limit: 0.05, p: 1.0}]"])
    ds = make_dataset(images, targets, batch_size=8, augment=build_augment(mild.augmentation, seed=2))
    for xb, yb in ds:
        for xi, yi in zip(xb.numpy(), yb.numpy()):
            assert np.abs(images.astype(np.float32) - xi).mean(axis=(1, 2, 3)).argmin() == yi


def test_user_transform_from_yaml_and_bad_nodes(make_cfg, swust_copy):
    images = real_images(swust_copy, n=4)
    inv = make_cfg(["augmentation.transforms=[{_target_: albumentations.InvertImg, p: 1.0}]"])
    out = build_augment(inv.augmentation).apply_batch(images)
    assert np.array_equal(out, 255 - images)
    with pytest.raises(ValueError, match=r"augmentation.transforms\[0\] \(albumentations.NoSuchTransform\)"):
        build_augment(make_cfg(["augmentation.transforms=[{_target_: albumentations.NoSuchTransform}]"]).augmentation)
    with pytest.raises(ValueError, match=r"augmentation.transforms\[1\]: expected a mapping with a _target_"):
        build_augment(make_cfg(["augmentation=light", "augmentation.transforms.1=blur"]).augmentation)
    resize = make_cfg(["augmentation.transforms=[{_target_: albumentations.Resize, height: 10, width: 10, p: 1.0}]"])
    with pytest.raises(ValueError, match="changed the image shape"):
        build_augment(resize.augmentation).apply(images[0])
    # the same number of pixels, turned on their side: not to be reshaped back into a scramble
    turn = make_cfg(["augmentation.transforms=[{_target_: albumentations.Transpose, p: 1.0}]"])
    with pytest.raises(ValueError, match="changed the image shape"):
        build_augment(turn.augmentation).apply(images[0])


def test_training_with_light_augmentation_logs_preview(make_cfg):
    metrics = train(make_cfg(["debug=fast", "augmentation=light"]))
    run = mlflow.get_run(metrics["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.params["augmentation.name"] == "light"
    assert "loss" in run.data.metrics and 0.0 <= metrics["test_accuracy"] <= 1.0
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert "preview.png" in artifacts


def test_the_same_seed_gives_the_same_augmented_batches(make_cfg, swust_copy):
    """Augmentation runs in tf.data's parallel threads, yet each image's draws follow from the
    seed and its place in the stream: two pipelines give the same batches, a second pass
    augments the images afresh, another seed gives other batches, and a pipeline started
    further on (a resumed run) gives the batches from there on."""
    images = real_images(swust_copy, n=24)
    targets = np.arange(len(images), dtype=np.int32)
    cfg = make_cfg(["augmentation=light"])

    def batches(seed, start=0):
        ds = make_dataset(images, targets, batch_size=8, shuffle=True, seed=seed, repeat=True,
                          augment=build_augment(cfg.augmentation, seed=seed), start=start)
        return [(x.numpy(), y.numpy()) for x, y in ds.take(6 - start // 8)]  # two passes over the 24 images

    def same(these, those):
        return len(these) == len(those) and all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
                                                for a, b in zip(these, those))

    first = batches(3)
    assert same(first, batches(3))
    assert same(first[4:], batches(3, start=32))  # into the second, reshuffled pass
    x = np.concatenate([b[0] for b in first])
    y = np.concatenate([b[1] for b in first])
    one, two = x[:24][np.argsort(y[:24])], x[24:][np.argsort(y[24:])]
    assert np.abs(one - images).mean() > 1.0 and np.abs(one - two).mean() > 1.0  # each pass draws anew
    other = batches(4)
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(first, other))
