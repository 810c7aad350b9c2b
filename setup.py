"""Build script: the required pybind11 extension ``chatflow._C`` from ``csrc/``.

Metadata lives in ``pyproject.toml``; this file only declares the extension, which is compiled at
install time (``pip install -e .`` / ``make install``) and required at run time.
"""

import glob

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup

ext_modules = [
    Pybind11Extension(
        "chatflow._C",
        sorted(glob.glob("csrc/*.cpp")),
        include_dirs=["csrc"],
        cxx_std=17,
        # -ffp-contract=off: no FMA contraction, so the blending arithmetic matches the pure-Python
        # reference (and megatron-core) bit for bit on every target.
        extra_compile_args=["-O3", "-ffp-contract=off", "-pthread"],
        extra_link_args=["-pthread"],  # std::thread in the fast blending builder
    )
]

setup(ext_modules=ext_modules, cmdclass={"build_ext": build_ext})
