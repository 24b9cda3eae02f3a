"""Tests of the inner tasks: interface, data streams, derived specs, training."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lopt.tasks as tasks
from lopt.nf import spec as nfspec
from lopt.tasks import (
    EMBEDDED_TASKS,
    SymmetryError,
    Task,
    check_symmetry,
    get_task,
    task_names,
    warp_images,
)
from lopt.tasks import data as task_data


@functools.cache
def cached_task(name: str) -> Task:
    return get_task(name)


@functools.cache
def cached_params(name: str):
    return jax.jit(cached_task(name).init)(jax.random.key(1))


# The augmented tasks share their models with the stored-digits ones; only their sampler
# differs, which test_augmented_images_are_new_at_every_draw covers.
MODEL_TASKS = tuple(name for name in EMBEDDED_TASKS if "augmented" not in name)


@pytest.fixture(params=MODEL_TASKS)
def task(request) -> Task:
    return cached_task(request.param)


def test_registry_lists_all_tasks():
    names = set(task_names())
    assert set(EMBEDDED_TASKS) <= names
    assert {"mlp_fashion_mnist", "cnn_cifar10", "rnn_lm1b", "transformer_lm1b"} <= names


def test_registry_rejects_unknown_names_and_options():
    with pytest.raises(ValueError, match="unknown task 'mlp_mnist'"):
        get_task("mlp_mnist")
    with pytest.raises(TypeError, match="does not take options \\['hidden'\\]"):
        get_task("mlp_digits", hidden=3)


def test_size_options_change_the_model():
    task = get_task("mlp_digits", width=7, depth=2, batch_size=5)
    params = jax.eval_shape(task.init, jax.random.key(0))
    assert params["Dense_0"]["kernel"].shape == (64, 7)
    assert params["Dense_1"]["kernel"].shape == (7, 7)
    assert params["Dense_2"]["kernel"].shape == (7, 10)
    assert task.batch(jax.random.key(0))["inputs"].shape == (5, 64)
    assert task.config["width"] == 7


@pytest.mark.parametrize(
    "task, option, value, message",
    [
        ("mlp_digits", "width", 0, "width must be an int >= 1, got 0"),
        ("mlp_digits", "depth", -1, "depth must be an int >= 0, got -1"),
        ("mlp_digits", "width", 2.5, "width must be an int >= 1, got 2.5"),
        ("cnn_digits", "channels", [16, 0], r"channels\[1\] must be an int >= 1, got 0"),
        ("cnn_digits", "stride", 0, "stride must be an int >= 1, got 0"),
        ("rnn_text", "hidden_size", 0, "hidden_size must be an int >= 1, got 0"),
        ("rnn_text", "embed_size", 0, "embed_size must be an int >= 1, got 0"),
        ("rnn_text", "seq_len", 0, "seq_len must be an int >= 1, got 0"),
        ("transformer_text", "width", 0, "width must be an int >= 1, got 0"),
        ("transformer_text", "num_heads", 0, "num_heads must be an int >= 1, got 0"),
        ("transformer_text", "mlp_size", 0, "mlp_size must be an int >= 1, got 0"),
        ("transformer_text", "depth", -1, "depth must be an int >= 0, got -1"),
        ("transformer_text", "seq_len", 0, "seq_len must be an int >= 1, got 0"),
        ("mlp_digits", "batch_size", 0, "batch_size must be a positive int, got 0"),
    ],
)
def test_a_size_out_of_range_names_the_option_and_its_range(task, option, value, message):
    with pytest.raises(ValueError, match=message):
        get_task(task, **{option: value})


def test_spec_validates_against_init_params(task):
    params = cached_params(task.name)
    nfspec.validate(task.spec, params)
    assert nfspec.symmetry_ids(task.spec), "every task has hidden-neuron symmetries"
    assert nfspec.perm_ids(task.spec, lambda i: isinstance(i, nfspec.ByChoice))


def test_batches_have_documented_shapes_and_ranges(task):
    batch = task.batch(jax.random.key(0))
    inputs, targets = batch["inputs"], batch["targets"]
    assert inputs.shape[0] == targets.shape[0] == task.batch_size
    if "tokens" in task.data["train"]:
        assert inputs.dtype == targets.dtype == jnp.int32
        assert inputs.shape == targets.shape
        # Targets are the inputs shifted by one byte.
        np.testing.assert_array_equal(inputs[:, 1:], targets[:, :-1])
        assert int(inputs.max()) < 256
    else:
        assert inputs.dtype == jnp.float32
        assert float(inputs.min()) >= 0.0 and float(inputs.max()) <= 1.0
        assert targets.dtype == jnp.int32 and int(targets.max()) < 10


@pytest.mark.parametrize(
    ("name", "pixel_range"), [("cnn_augmented_digits", 16.0), ("cnn_augmented_letters", 255.0)]
)
def test_augmented_images_are_new_at_every_draw(name, pixel_range):
    task = cached_task(name)
    first = task.batch(jax.random.key(0))
    again = task.batch(jax.random.key(0))
    other = task.batch(jax.random.key(1), "test")
    np.testing.assert_array_equal(first["inputs"], again["inputs"])  # a pure function of its key
    images = np.asarray(first["inputs"])
    assert images.shape == (128, 8, 8, 1) and images.min() >= 0.0 and images.max() <= 1.0
    stored = np.asarray(task.data["train"]["images"], np.float32).reshape(-1, 64) / pixel_range
    drawn = images.reshape(128, 64)
    # No drawn image is a stored one: each is distorted (and noisy) afresh.
    distance = np.abs(drawn[:, None, :] - stored[None, :, :]).max(axis=-1).min(axis=1)
    assert (distance > 0.05).all()
    assert other["inputs"].shape == (128, 8, 8, 1)
    with pytest.raises(ValueError, match="augmentation scale must be < 1"):
        get_task("mlp_augmented_digits", scale=1.5)


def bilinear_reference(image: np.ndarray, row: float, col: float) -> np.ndarray:
    """Bilinear interpolation at one source point, zero outside the image."""
    height, width, _ = image.shape
    value = np.zeros(image.shape[-1])
    top, left = int(np.floor(row)), int(np.floor(col))
    for y, wy in ((top, 1 - (row - top)), (top + 1, row - top)):
        for x, wx in ((left, 1 - (col - left)), (left + 1, col - left)):
            if 0 <= y < height and 0 <= x < width:
                value += wy * wx * image[y, x]
    return value


def test_warped_images_are_bilinear_with_zeros_outside():
    images = np.asarray(jax.random.uniform(jax.random.key(0), (3, 5, 6, 2)))
    maps = np.array(
        [
            [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]],  # identity
            [[0.9, -0.4, 1.7], [0.4, 0.9, -2.6]],  # rotation with shifts past the border
            [[1.3, 0.2, -4.5], [0.0, 0.7, 5.2]],  # most points far outside
        ],
        np.float32,
    )
    warped = np.asarray(warp_images(jnp.asarray(images), jnp.asarray(maps)))
    np.testing.assert_array_equal(warped[0], images[0])
    centre = np.array([2.0, 2.5])
    for b in (1, 2):
        for y in range(5):
            for x in range(6):
                source = maps[b, :, :2] @ (np.array([y, x]) - centre) + maps[b, :, 2] + centre
                want = bilinear_reference(images[b], *source)
                np.testing.assert_allclose(warped[b, y, x], want, rtol=1e-5, atol=1e-6)
    assert (warped[2] == 0).mean() > 0.3  # points outside the image read zeros


@pytest.mark.parametrize(
    ("images", "sizes"),
    [
        (task_data.digits_images, {"train": 1438, "valid": 179, "test": 180}),
        (task_data.letters_images, {"train": 300, "valid": 60, "test": 80}),
    ],
    ids=["digits", "letters"],
)
def test_image_splits_hold_distinct_images(images, sizes):
    splits = images()
    assert list(splits) == ["train", "valid", "test"]
    assert {name: len(split["labels"]) for name, split in splits.items()} == sizes
    # By content (the pixels alone, whatever the label): no image is in two splits.
    contents = {
        name: {image.tobytes() for image in split["images"]} for name, split in splits.items()
    }
    assert sum(len(c) for c in contents.values()) == sum(sizes.values())
    assert not contents["train"] & contents["valid"]
    assert not contents["train"] & contents["test"]
    assert not contents["valid"] & contents["test"]


def test_letter_splits_are_whole_fonts_with_every_class_alike():
    fonts = task_data.letter_fonts()
    assert {name: len(names) for name, names in fonts.items()} == {
        "train": 15,
        "valid": 3,
        "test": 4,
    }
    assert len({font for names in fonts.values() for font in names}) == 22
    for name, split in task_data.letters_images().items():
        assert split["images"].shape[1:] == (8, 8, 1) and split["images"].dtype == np.uint8
        # Every font gives each class two glyphs, upper and lower case.
        counts = np.bincount(split["labels"], minlength=10)
        assert (counts == 2 * len(fonts[name])).all() and len(counts) == 10


def test_letters_keep_only_fonts_with_the_letters_and_render_deterministically():
    glyphs = task_data.letter_glyphs()
    # Symbol fonts map the letters' codes to other glyphs; the Display fonts lack them.
    dropped = {"cmex10", "cmsy10", "DejaVuSansDisplay", "LastResortHE-Regular", "STIXNonUni"}
    assert not dropped & set(glyphs)
    assert {"cmr10", "cmmi10", "STIXGeneral", "DejaVuSansMono-Oblique"} <= set(glyphs)
    fonts = {font.stem: font for font in task_data.matplotlib_fonts()}
    assert not task_data.has_glyphs(fonts["cmsy10"], "Aa")  # its upper case alone are letters
    characters = task_data.LETTERS + task_data.LETTERS.lower()
    again = task_data.render_glyphs(fonts["cmr10"], characters)
    np.testing.assert_array_equal(again, glyphs["cmr10"])
    # Scaled to fit: the longer side of every glyph's ink spans 7 of the 8 pixels.
    ink = again[..., 0] > 0
    spans = np.maximum(ink.any(axis=1).sum(axis=1), ink.any(axis=2).sum(axis=1))
    assert set(spans) <= {7, 8}


def test_framed_glyph_centres_the_ink_on_a_square():
    frame = task_data.framed_glyph(np.full((14, 4), 255, np.uint8), fill=7 / 8)
    assert frame.shape == (16, 16)
    rows, cols = np.nonzero(frame)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (1, 14, 6, 9)


def test_text_splits_hold_distinct_paragraphs_in_the_planned_shares():
    text = task_data.pydoc_text()
    paragraphs = {name: bytes(split["tokens"]).split(b"\n\n") for name, split in text.items()}
    for name, pieces in paragraphs.items():
        assert len(pieces) == len(set(pieces)), f"a paragraph repeats within {name}"
    assert not set(paragraphs["train"]) & set(paragraphs["valid"])
    assert not set(paragraphs["train"]) & set(paragraphs["test"])
    assert not set(paragraphs["valid"]) & set(paragraphs["test"])
    total = sum(len(split["tokens"]) for split in text.values())
    for name in ("valid", "test"):
        assert len(text[name]["tokens"]) / total == pytest.approx(0.1, abs=0.01)


def test_first_occurrences_and_split_text_drop_repeats():
    images = np.array([[1, 2], [3, 4], [1, 2], [5, 6]])
    np.testing.assert_array_equal(task_data.first_occurrences(images), [0, 1, 3])
    corpus = "\n\n".join(["a" * 30, "b" * 30, "a" * 30, "c" * 30, "d" * 30, "e" * 30])
    splits = task_data.split_text(corpus, {"valid": 0.2, "test": 0.2}, block_bytes=1)
    everything = [p for pieces in splits.values() for p in pieces]
    assert sorted(everything) == ["a" * 30, "b" * 30, "c" * 30, "d" * 30, "e" * 30]
    assert all(splits[name] for name in ("train", "valid", "test"))


def test_test_split_draws_from_held_out_data():
    task = cached_task("rnn_text")
    test_tokens = bytes(np.asarray(task.data["test"]["tokens"]))
    window = bytes(np.asarray(task.batch(jax.random.key(3), "test")["inputs"][0], np.uint8))
    assert window in test_tokens
    with pytest.raises(ValueError, match="unknown split 'heldout'"):
        task.batch(jax.random.key(0), "heldout")


def test_batches_are_independent_streams(task):
    keys = jax.random.split(jax.random.key(0), 3)
    batches = [task.batch(k)["inputs"] for k in keys]
    assert not np.array_equal(batches[0], batches[1])
    np.testing.assert_array_equal(batches[2], task.batch(keys[2])["inputs"])


def test_task_passes_through_jit_as_an_argument():
    task = cached_task("mlp_digits")
    leaves = jax.tree_util.tree_leaves(task)
    assert {leaf.shape[0] for leaf in leaves} == {1438, 179, 180}

    @jax.jit
    def draw(task, key):
        return task.batch(key)

    key = jax.random.key(5)
    np.testing.assert_array_equal(draw(task, key)["inputs"], task.batch(key)["inputs"])
    draw(task, jax.random.key(6))
    assert draw._cache_size() == 1
    rebuilt = jax.tree_util.tree_map(lambda x: x, task)
    assert isinstance(rebuilt, Task) and rebuilt.spec is task.spec


def test_symmetry_ids_keep_the_function_and_by_choice_ids_change_it(task):
    params = cached_params(task.name)
    batch = task.batch(jax.random.key(2))
    symmetries = nfspec.symmetry_ids(task.spec)
    permuted = nfspec.permute(
        params,
        task.spec,
        nfspec.random_permutations(jax.random.key(3), task.spec, params, ids=symmetries),
    )
    moved = sum(
        int(jnp.sum(a != b))
        for a, b in zip(
            jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(permuted), strict=True
        )
    )
    assert moved > 0, "the permutation must actually move parameters"
    loss = jax.jit(task.loss)
    assert float(loss(permuted, batch)) == pytest.approx(float(loss(params, batch)), rel=1e-5)

    sizes = nfspec.perm_sizes(task.spec, params)
    by_choice = [
        perm_id
        for perm_id in nfspec.perm_ids(task.spec, lambda i: isinstance(i, nfspec.ByChoice))
        if sizes[perm_id] > 1  # the digits' single input channel has nothing to permute
    ]
    # Predictions (logits) are compared id by id: unchanged under every symmetry id,
    # changed under every by-choice id.
    report = check_symmetry(
        task, params, None, jax.random.key(4), ids=symmetries + by_choice, raise_on_failure=False
    )
    assert set(report.errors) == {*symmetries, *by_choice, "<all>"}
    assert set(report.failed) == {*by_choice, "<all>"}


def test_check_symmetry_catches_a_per_block_residual_id():
    # The UNF paper's code gave each transformer block its own residual-stream id; that is
    # not a symmetry of the network and the numerical check must say so.
    task = cached_task("transformer_text")
    stream = task.spec["embed"]["embedding"][1]
    wrong = jax.tree_util.tree_map_with_path(
        lambda path, axes: tuple(
            "block_1/stream" if a == stream and "block_1" in jax.tree_util.keystr(path) else a
            for a in axes
        ),
        task.spec,
        is_leaf=nfspec.is_axes,
    )
    params = cached_params(task.name)
    with pytest.raises(SymmetryError, match="block_1/stream"):
        check_symmetry(task, params, wrong, jax.random.key(1))


def test_check_symmetry_catches_a_split_hidden_id():
    task = cached_task("mlp_digits")
    params = cached_params(task.name)
    wrong = jax.tree_util.tree_map(lambda axes: axes, task.spec, is_leaf=nfspec.is_axes)
    wrong["Dense_1"]["kernel"] = ("hidden_in", wrong["Dense_1"]["kernel"][1])
    report = check_symmetry(task, params, wrong, jax.random.key(1), raise_on_failure=False)
    assert not report.ok and "hidden_in" in report.failed


def test_check_symmetry_accepts_plain_functions():
    params = {"w1": jnp.arange(12.0).reshape(3, 4) / 10, "w2": jnp.arange(8.0).reshape(4, 2)}
    fn = lambda p, x: jnp.tanh(x @ p["w1"]) @ p["w2"]
    inputs = jnp.ones((5, 3))
    good = {"w1": (None, "h"), "w2": ("h", None)}
    assert check_symmetry(fn, params, good, jax.random.key(0), inputs=inputs).ok
    bad = {"w1": (None, "h"), "w2": ("g", None)}
    with pytest.raises(SymmetryError):
        check_symmetry(fn, params, bad, jax.random.key(0), inputs=inputs)
    with pytest.raises(TypeError, match="Task or a callable"):
        check_symmetry(3, params, good, jax.random.key(0))


def short_adam_runs(task: Task, steps: int = 60) -> tuple[dict, dict]:
    """Two Adam runs vmapped over keys at batch 32: held-out metrics before and after."""
    optimizer = optax.adam(2e-2)
    small = dataclasses.replace(task, batch_size=32)

    @jax.jit
    @jax.vmap
    def run(key):
        init_key, eval_key, data_key = jax.random.split(key, 3)
        params = small.init(init_key)
        held_out = task.batch(eval_key, "test")
        before = task.metrics(params, held_out)

        def step(carry, batch_key):
            params, state = carry
            loss, grads = jax.value_and_grad(small.loss)(params, small.batch(batch_key))
            updates, state = optimizer.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), loss

        (params, _), _ = jax.lax.scan(
            step, (params, optimizer.init(params)), jax.random.split(data_key, steps)
        )
        return before, task.metrics(params, held_out)

    return run(jax.random.split(jax.random.key(0), 2))


def test_short_adam_runs_jit_vmap_and_lower_the_held_out_loss(task):
    before, after = short_adam_runs(task)
    assert before["loss"].shape == (2,)
    # Two independent runs (vmapped over keys) both learn.
    assert bool(jnp.all(after["loss"] < before["loss"] - 0.15)), (before, after)
    assert not np.allclose(after["loss"][0], after["loss"][1])


def test_short_adam_lowers_the_held_out_loss_on_the_letters():
    # Held out is other fonts, distorted afresh: the runs learn letters, not glyphs.
    before, after = short_adam_runs(cached_task("mlp_augmented_letters"))
    assert bool(jnp.all(after["loss"] < before["loss"] - 0.5)), (before, after)


def test_param_scale_keeps_the_function_and_scales_params_and_gradients():
    base = tasks.get_task("mlp_digits", width=8)
    scaled = tasks.get_task("mlp_digits", width=8, param_scale=100.0)
    key, batch = jax.random.key(0), base.batch(jax.random.key(1))
    params, scaled_params = base.init(key), scaled.init(key)
    for p, q in zip(jax.tree.leaves(params), jax.tree.leaves(scaled_params), strict=True):
        np.testing.assert_allclose(np.asarray(q) * 100.0, np.asarray(p), rtol=1e-6)
    np.testing.assert_allclose(scaled.loss(scaled_params, batch), base.loss(params, batch), 1e-5)
    grads = jax.grad(base.loss)(params, batch)
    scaled_grads = jax.grad(scaled.loss)(scaled_params, batch)
    for g, h in zip(jax.tree.leaves(grads), jax.tree.leaves(scaled_grads), strict=True):
        np.testing.assert_allclose(np.asarray(h), 100.0 * np.asarray(g), rtol=1e-4, atol=1e-6)
    assert scaled.config["param_scale"] == 100.0 and "param_scale" not in base.config
    assert scaled.spec == base.spec
    assert "param_scale" not in tasks.with_param_scale(scaled, 1.0).config
    # A config's param_scale: null builds the task as it is.
    assert tasks.get_task("mlp_digits", width=8, param_scale=None).config == base.config
    for bad in (0.0, -1.0, float("inf"), True):
        with pytest.raises(ValueError, match="param_scale must be a positive finite number"):
            tasks.with_param_scale(base, bad)
