"""lopt.checkpoint: exact round trips (PRNG keys included), atomicity, clear errors."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lopt.checkpoint import Checkpointer, CheckpointError, describe, nested_dict


class State(NamedTuple):
    theta: dict
    keys: jax.Array
    typed_key: jax.Array
    rbg_key: jax.Array
    accumulator: object
    step: jax.Array


def make_state(seed: int = 0, width: int = 3) -> State:
    key = jax.random.PRNGKey(seed)
    return State(
        theta={
            "network": {"kernel": jax.random.normal(key, (width, 4)), "bias": jnp.zeros(4)},
            "log_alpha": jnp.asarray(-2.3, jnp.float32),
        },
        keys=jax.random.split(key, 5),
        typed_key=jax.random.split(jax.random.key(seed + 1), 2),
        rbg_key=jax.random.key(seed + 2, impl="rbg"),
        accumulator=None,
        step=jnp.asarray(7, jnp.int32),
    )


def assert_same(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            assert jnp.issubdtype(y.dtype, jax.dtypes.prng_key)
            assert jax.random.key_impl(x) == jax.random.key_impl(y)
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_is_exact_including_typed_keys(tmp_path):
    state = make_state()
    with Checkpointer(tmp_path / "ckpt") as checkpoints:
        checkpoints.save(3, state, config={"task": {"width": 3}})
        assert checkpoints.all_steps() == [3]
        restored = checkpoints.restore(3, like=jax.eval_shape(lambda: make_state(1)))
        assert checkpoints.metadata(3)["config"] == {"task": {"width": 3}}
    assert_same(restored, state)
    # Restored keys drive the same random streams as the originals.
    np.testing.assert_array_equal(
        jax.random.normal(restored.rbg_key, (3,)), jax.random.normal(state.rbg_key, (3,))
    )


def test_keeps_the_latest_steps_and_refuses_to_overwrite(tmp_path):
    with Checkpointer(tmp_path, max_to_keep=2) as checkpoints:
        for step in (1, 2, 3):
            checkpoints.save(step, make_state(step))
        assert checkpoints.all_steps() == [2, 3] and checkpoints.latest_step() == 3
        with pytest.raises(CheckpointError, match="already exists"):
            checkpoints.save(3, make_state())
        assert_same(checkpoints.restore(3, like=make_state()), make_state(3))


def test_failed_write_leaves_the_last_good_checkpoint(tmp_path):
    good = make_state()
    with Checkpointer(tmp_path) as checkpoints:
        checkpoints.save(1, good)
        unserialisable = good._replace(accumulator=np.array(["not", "numeric"], dtype=object))
        with pytest.raises(Exception):  # noqa: B017 - orbax's own error type
            checkpoints.save(2, unserialisable)
    with Checkpointer(tmp_path) as checkpoints:  # a new process sees only the good step
        assert checkpoints.all_steps() == [1]
        assert_same(checkpoints.restore(1, like=good), good)
    # The interrupted write never took a step's name.
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.isdigit()) == ["1"]


def test_incompatible_structure_is_reported_by_leaf(tmp_path):
    with Checkpointer(tmp_path) as checkpoints:
        checkpoints.save(1, make_state(width=3))
        with pytest.raises(CheckpointError, match=r"\['kernel'\]: shape \(3, 4\) in the ch"):
            checkpoints.restore(1, like=make_state(width=5))
        with pytest.raises(CheckpointError, match="missing from the checkpoint"):
            checkpoints.restore(1, like={"other": jnp.zeros(3)})


def _largest_data_file(step_dir: Path) -> Path:
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file()]
    return max(files, key=lambda p: p.stat().st_size)


def test_corrupt_arrays_and_metadata_are_clear_errors(tmp_path):
    state = make_state()
    with Checkpointer(tmp_path) as checkpoints:
        checkpoints.save(1, state)
        checkpoints.save(2, state)
    data = _largest_data_file(tmp_path / "1")
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    (tmp_path / "2" / "meta" / "metadata").write_text("{not json")
    with Checkpointer(tmp_path) as checkpoints:
        with pytest.raises(CheckpointError, match="corrupt"):
            checkpoints.restore(1, like=state)
        with pytest.raises(CheckpointError, match="corrupt"):
            checkpoints.restore(2, like=state)


def test_nested_dict_rebuilds_a_sub_tree(tmp_path):
    state = make_state()
    with Checkpointer(tmp_path) as checkpoints:
        checkpoints.save(1, state)
        leaves, meta = checkpoints.restore_leaves(1)
    infos = describe(state)
    assert [[p, list(s), d, k] for p, s, d, k in infos] == meta["leaves"]
    theta = nested_dict(leaves, infos, ".theta")
    assert_same(jax.tree.map(jnp.asarray, theta), state.theta)
    with pytest.raises(CheckpointError, match="no leaves"):
        nested_dict(leaves, infos, ".missing")


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_damage_to_any_file_of_a_checkpoint_is_refused_naming_the_file(tmp_path, damage):
    import shutil

    from lopt.checkpoint import FILES_MANIFEST

    state = make_state()
    like = jax.eval_shape(lambda: make_state(1))
    pristine = tmp_path / "pristine"
    with Checkpointer(pristine) as checkpoints:
        checkpoints.save(1, state)
        checkpoints.save(2, state)  # a later save leaves the earlier step's files alone
        checkpoints.restore(1, like=like)
    files = sorted(p.relative_to(pristine) for p in (pristine / "2").rglob("*") if p.is_file())
    assert Path("2") / FILES_MANIFEST in files and len(files) >= 5
    for number, name in enumerate(files):
        copy = tmp_path / f"copy{number}"
        shutil.copytree(pristine, copy)
        target = copy / name
        data = target.read_bytes()
        if damage == "truncate":
            target.write_bytes(data[: len(data) // 2])
        elif damage == "flip":
            raw = bytearray(data)
            raw[len(raw) // 2] ^= 0x01
            target.write_bytes(bytes(raw))
        else:
            target.unlink()
        with Checkpointer(copy) as checkpoints:
            if 2 not in checkpoints.all_steps():  # no longer a complete step at all
                assert name.name in ("_CHECKPOINT_METADATA", FILES_MANIFEST)
                assert damage == "delete"
                if name.name == FILES_MANIFEST:
                    with pytest.raises(CheckpointError, match="incomplete: its file list"):
                        checkpoints.restore(2, like=like)
                continue
            with pytest.raises(CheckpointError, match="corrupt") as error:
                checkpoints.restore(2, like=like)
            if name.name != FILES_MANIFEST:
                assert name.name in str(error.value) or FILES_MANIFEST in str(error.value)


def test_a_step_a_crash_left_without_its_file_list_is_unfinished_and_saved_again(tmp_path):
    from lopt.checkpoint import FILES_MANIFEST

    state = make_state()
    like = jax.eval_shape(lambda: make_state(1))
    with Checkpointer(tmp_path, max_to_keep=2) as checkpoints:
        checkpoints.save(1, state)
        checkpoints.save(2, state)
    (tmp_path / "2" / FILES_MANIFEST).unlink()  # killed after orbax finished, before the list
    with Checkpointer(tmp_path, max_to_keep=2) as checkpoints:
        assert checkpoints.all_steps() == [1]
        assert checkpoints.latest_step() == 1
        checkpoints.save(2, make_state(2))  # the resumed run writes the step again
        assert checkpoints.all_steps() == [1, 2]
        restored = checkpoints.restore(2, like=like)
    assert_same(restored, make_state(2))
