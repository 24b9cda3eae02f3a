"""``--help`` of the Hydra tools: the config groups a user composes from, and no others.

Hydra's own help lists every group on the config search path, including the ``schema/*``
groups that exist only to type-check a user's choices. The tools' help templates
(``hydra.help.template`` in ``configs/train.yaml`` and ``configs/eval.yaml``) call the
``lopt_config_groups`` resolver instead. It lists the option files shipped in the
``lopt.configs`` package, so a group appears exactly when a user can pick one of its options.
"""

from __future__ import annotations

from importlib import resources

from omegaconf import OmegaConf

RESOLVER = "lopt_config_groups"
CONFIG_PACKAGE = "lopt.configs"


def config_groups(*groups: str) -> str:
    """One ``group: option, option`` line per shipped config group, sorted by group.

    Args:
        *groups: the groups to list; none lists every group of the package.

    Returns:
        The lines, each ending in a newline.

    Raises:
        ValueError: a requested group has no option files.
    """
    root = resources.files(CONFIG_PACKAGE)
    found = {
        entry.name: sorted(f.name.removesuffix(".yaml") for f in entry.iterdir() if _is_yaml(f))
        for entry in root.iterdir()
        if entry.is_dir() and any(_is_yaml(f) for f in entry.iterdir())
    }
    missing = sorted(set(groups) - set(found))
    if missing:
        raise ValueError(f"no config group {missing} in {CONFIG_PACKAGE}; it has {sorted(found)}")
    names = sorted(groups) if groups else sorted(found)
    return "".join(f"{name}: {', '.join(found[name])}\n" for name in names)


def _is_yaml(entry) -> bool:
    return entry.is_file() and entry.name.endswith(".yaml")


def register_help_resolver() -> None:
    """Makes ``${lopt_config_groups:group,...}`` available to config files; idempotent."""
    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, config_groups)
