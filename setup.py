"""Build boss_fast, driving CMake for the optional C++ extension ``boss_fast._C``.

The extension is optional: where CMake or a C++ compiler is missing the build warns and the package installs
without it (the Numba and NumPy backends still work). Set ``BOSS_FAST_REQUIRE_CPP=1`` to make a failed
extension build an error instead (CI does).
"""

import os
import subprocess
import sys
import warnings
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).parent.resolve()


class CMakeExtension(Extension):
    def __init__(self, name: str, sourcedir: Path) -> None:
        super().__init__(name, sources=[])
        self.sourcedir = str(sourcedir)


class CMakeBuild(build_ext):
    def build_extensions(self) -> None:
        self._failed: set[str] = set()
        super().build_extensions()
        # Drop what did not build, so setuptools neither copies nor maps a missing file.
        self.extensions = [ext for ext in self.extensions if ext.name not in self._failed]

    def build_extension(self, ext: CMakeExtension) -> None:
        try:
            self._build_cmake(ext)
        except (OSError, subprocess.CalledProcessError) as err:
            if os.environ.get("BOSS_FAST_REQUIRE_CPP") == "1":
                raise
            self._failed.add(ext.name)
            warnings.warn(
                f"boss_fast: building the C++ extension failed ({err}); installing without the 'cpp' "
                "backend. The Numba and NumPy backends still work.",
                stacklevel=1,
            )

    def _build_cmake(self, ext: CMakeExtension) -> None:
        import pybind11

        extdir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        cfg = "Debug" if self.debug else "Release"
        build_temp = Path(self.build_temp) / ext.name
        build_temp.mkdir(parents=True, exist_ok=True)
        cmake_args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={extdir}{os.sep}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DCMAKE_BUILD_TYPE={cfg}",
            f"-DBOSS_FAST_VERSION={self.distribution.get_version()}",
        ]
        build_args = ["--config", cfg, "--parallel", str(os.cpu_count() or 1)]
        subprocess.run(["cmake", ext.sourcedir, *cmake_args], cwd=build_temp, check=True)
        subprocess.run(["cmake", "--build", ".", *build_args], cwd=build_temp, check=True)


setup(
    ext_modules=[CMakeExtension("boss_fast._C", ROOT)],
    cmdclass={"build_ext": CMakeBuild},
)
