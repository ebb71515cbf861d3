"""Builds kvq's op library against the torch of the running Python (CMake, with
torch.utils.cmake_prefix_path) and installs it inside the `kvq` package (python/kvq).

    python3 -m pip install --no-build-isolation .      (or -e . for an editable install)

Build isolation must be off: the op library has to be built against the torch that will load it
(docs/python.md, "Installing the package").
"""
import glob
import os
import shutil
import subprocess

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        try:
            import torch.utils
        except ImportError:
            raise RuntimeError(
                "kvq builds its op library against the torch of the environment it is installed "
                "into, and this build environment has no torch: install PyTorch 2.x first, then "
                "run `python -m pip install --no-build-isolation .`") from None

        build_dir = os.path.abspath(os.path.join(self.build_temp, "cmake"))
        subprocess.check_call([
            "cmake", "-S", ROOT, "-B", build_dir, "-DCMAKE_BUILD_TYPE=Release",
            "-DKVQ_OPS_ONLY=ON", "-DCMAKE_PREFIX_PATH=" + torch.utils.cmake_prefix_path])
        subprocess.check_call(["cmake", "--build", build_dir, "--target", "kvq_torch",
                               "-j", str(os.cpu_count() or 1)])
        target = self.get_ext_fullpath(ext.name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(os.path.join(build_dir, "libkvq_torch.so"), target)


setup(
    package_dir={"": "python"},
    packages=["kvq"],
    ext_modules=[Extension("kvq._kvq_torch", sources=[])],
    cmdclass={"build_ext": CMakeBuild},
)
