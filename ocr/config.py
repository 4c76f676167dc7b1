"""OmegaConf resolvers used by the configs, registered on import of the runners."""

from __future__ import annotations

from omegaconf import OmegaConf

from ocr.data.datamodule import default_num_workers


def multiple_of_32(value: float, factor: float = 1.0) -> int:
    """``value * factor`` rounded to a multiple of 32 (at least 32): network input sides."""
    return max(32, int(round(float(value) * float(factor) / 32)) * 32)


def register_resolvers() -> None:
    resolvers = {"multiple_of_32": multiple_of_32, "num_workers": default_num_workers}
    for name, function in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, function)
