"""Packaging beyond what pyproject.toml can say: the platform wheel.

``scripts/build-wheel.sh`` builds a wheel from a staged copy of this directory with the
``pyro`` binary and its static guest agent in ``pyro_mcp/bin/``. When they are there, the
wheel is a platform wheel (``py3-none-linux_x86_64``: the binaries are x86_64 Linux, the
Python code runs on any Python 3) and installs a ``pyro`` console script. Without them (a
plain ``pip install ./python``) it is the pure, SDK-only wheel, with no ``pyro`` command that
could shadow one on ``PATH``.
"""

from pathlib import Path

from setuptools import Distribution, setup

BUNDLED = (Path(__file__).resolve().parent / "pyro_mcp" / "bin" / "pyro").is_file()


class BinaryDistribution(Distribution):
    """A distribution with platform code: built into platlib, ``Root-Is-Purelib: false``."""

    def has_ext_modules(self) -> bool:
        return True


def platform_wheel():  # type: ignore[no-untyped-def]
    """A ``bdist_wheel`` that tags the wheel ``py3-none-linux_x86_64``: the binaries are x86_64
    Linux, the Python code has no ABI."""
    try:  # setuptools >= 70.1 has bdist_wheel built in; older ones take it from `wheel`.
        from setuptools.command.bdist_wheel import bdist_wheel
    except ImportError:  # pragma: no cover - depends on the build environment
        from wheel.bdist_wheel import bdist_wheel

    class PlatformWheel(bdist_wheel):
        def get_tag(self):  # type: ignore[no-untyped-def]
            return "py3", "none", "linux_x86_64"

    return PlatformWheel


setup(
    distclass=BinaryDistribution if BUNDLED else Distribution,
    cmdclass={"bdist_wheel": platform_wheel()} if BUNDLED else {},
    entry_points={"console_scripts": ["pyro = pyro_mcp._cli:main"]} if BUNDLED else {},
)
