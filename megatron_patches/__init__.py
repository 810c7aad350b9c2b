"""Runtime patches that let megatron-core 0.16.1 train on CPU (gloo) as it does on GPU.

Nothing happens on import. Entry points call :func:`check_version` and :func:`apply` explicitly::

    import megatron_patches
    megatron_patches.apply()          # before building models/optimizers

Each patch lives in its own module whose docstring says what it changes, why, for which
megatron-core version, and when it can be removed. On a machine with CUDA the CPU patches are
not applied at all; GPU runs get only the patches that have nothing to do with the device
(:data:`ALWAYS_PATCHES`, and :data:`TORCH_ADAM_PATCHES` when TE/apex are missing).
"""

from __future__ import annotations

import importlib
import logging
from importlib import metadata

logger = logging.getLogger(__name__)

#: The one megatron-core version these patches are written and tested against.
PINNED_MEGATRON_CORE = "0.16.1"

#: Applied on every machine, CPU and GPU alike (not about the device).
ALWAYS_PATCHES = ("ckpt_results_queue",)
#: CPU patches in the order they are applied.
CPU_PATCHES = ("device_redirect", "param_type", "synchronize", "rng_tracker", "causal_mask")
#: Applied whenever megatron-core uses torch's Adam fallback (no TE/apex), CPU or GPU.
TORCH_ADAM_PATCHES = ("distrib_optim_load",)
_ALL_PATCHES = ALWAYS_PATCHES + CPU_PATCHES + TORCH_ADAM_PATCHES


def check_version(installed: str | None = None) -> str:
    """Checks that the installed megatron-core is the pinned version.

    Args:
        installed: version string to check instead of the installed package (for tests).

    Returns:
        The checked version string.

    Raises:
        RuntimeError: when megatron-core is missing or its version differs from the pin.
    """
    if installed is None:
        try:
            installed = metadata.version("megatron-core")
        except metadata.PackageNotFoundError as exc:
            raise RuntimeError(
                f"megatron-core is not installed; ChatFlow needs megatron-core=="
                f"{PINNED_MEGATRON_CORE} (pip install megatron-core=={PINNED_MEGATRON_CORE})"
            ) from exc
    if installed != PINNED_MEGATRON_CORE:
        raise RuntimeError(
            f"megatron-core {installed} is installed but ChatFlow is pinned to "
            f"megatron-core=={PINNED_MEGATRON_CORE}: its patches and checkpoint layout are "
            f"written for that version (pip install megatron-core=={PINNED_MEGATRON_CORE})"
        )
    return installed


def _module(name: str):
    return importlib.import_module(f"{__name__}.{name}")


def apply(cuda_available: bool | None = None) -> list[str]:
    """Checks the version and applies every patch this machine needs. Idempotent.

    Args:
        cuda_available: override the CUDA check (for tests); ``None`` asks torch.

    Returns:
        Names of the patches that are active after the call.
    """
    import torch

    check_version()
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    names = list(ALWAYS_PATCHES) + ([] if cuda_available else list(CPU_PATCHES))
    if _module("distrib_optim_load").uses_torch_adam():
        names += list(TORCH_ADAM_PATCHES)
    for name in names:
        module = _module(name)
        if not module.is_applied():
            module.apply()
            logger.debug("applied megatron patch %s", name)
    return names


def cpu_mode() -> bool:
    """True when the CPU patches are active: megatron-core runs on the CPU even if CUDA exists
    (``apply(cuda_available=False)`` on a GPU machine forces that, e.g. for CPU tests)."""
    return _module("device_redirect").is_applied()


def revert() -> None:
    """Undoes every applied patch (for tests; training processes never need it)."""
    for name in reversed(_ALL_PATCHES):
        _module(name).revert()


def applied() -> list[str]:
    """Names of the patches currently active."""
    return [n for n in _ALL_PATCHES if _module(n).is_applied()]
