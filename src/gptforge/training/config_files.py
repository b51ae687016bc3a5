"""TOML config files for `gptforge train` and `finetune`: a path, or the name of a bundled one."""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

from ..errors import UserError
from .config import RunConfig, TrainConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


def load_config_file(path: str, cls: type[RunConfig] = TrainConfig) -> dict:
    """The flat settings of a TOML config: keys named like `cls`'s settings, at the top level or
    in a table named for their group ([optim] lr = 1e-3). A bare name (e.g. `the-verdict`) means
    one of the configs shipped in gptforge/configs/."""
    file = Path(path)
    if not file.exists() and "/" not in path and not path.endswith(".toml"):
        bundled = resources.files("gptforge") / "configs" / f"{path}.toml"
        if bundled.is_file():
            return cls.flatten(tomllib.loads(bundled.read_text()), f"config {path}: ")
        names = sorted(p.name.removesuffix(".toml") for p in (resources.files("gptforge") / "configs").iterdir()
                       if p.name.endswith(".toml"))
        raise UserError(f"config {path!r} not found; bundled configs: {', '.join(names)}")
    try:
        data = tomllib.loads(file.read_text())
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read config file {path}: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"config file {path} is not valid TOML: {e}") from None
    return cls.flatten(data, f"config file {path}: ")
