"""``--help`` of the Hydra tools lists the groups a user picks from, not the schemas."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hydra import compose, initialize_config_module

import lopt.cli.eval
import lopt.cli.train  # noqa: F401
from lopt.cli.help import config_groups

USER_GROUPS = ("estimator", "experiment", "logger", "lopt", "outer_opt", "recipe", "task")


@pytest.mark.parametrize(("config", "groups"), [("train", USER_GROUPS), ("eval", ("task",))])
def test_help_template_lists_the_user_groups_and_no_schema(config, groups):
    with initialize_config_module(config_module="lopt.configs", version_base="1.3"):
        cfg = compose(config_name=config, return_hydra_config=True)
    template = cfg.hydra.help.template
    listed = [line.split(":")[0] for line in template.splitlines() if ": " in line]
    assert [g for g in listed if g in USER_GROUPS or g.startswith("schema")] == list(groups)
    assert "schema" not in template
    assert "$CONFIG" in template and "$APP_CONFIG_GROUPS" not in template


def test_config_groups_lists_every_option_file_and_refuses_an_unknown_group():
    lines = dict(line.split(": ") for line in config_groups().splitlines())
    assert set(USER_GROUPS) <= set(lines)  # and the groups of the other tools
    assert "mlp_digits" in lines["task"].split(", ")
    assert "smoke" in lines["experiment"].split(", ")
    with pytest.raises(ValueError, match=r"no config group \['schema'\]"):
        config_groups("schema")


def test_lopt_train_help_shows_no_schema_groups():
    shown = subprocess.run(
        [sys.executable, "-m", "lopt.cli.train", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert "schema/" not in shown
    assert "experiment: cnn, demo, mlp, rnn, smoke, transformer" in shown
