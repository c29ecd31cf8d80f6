"""Build dualkv's native parts: one pybind11 module `dualkv._C` from cpp/ (one folder per layer,
cpp/bindings/ for the pybind11 code), and the Cython modules that live next to their Python
code.

Optional backends follow what the machine has (found with pkg-config): a source file named
`*_uring.cpp` is built only with liburing, `*_ucx.cpp` only with UCX, `*_crypto.cpp` only with
OpenSSL's libcrypto (SHA-256 key chains; without it dualkv.store.keys falls back to
hashlib). Without them the build still succeeds and `dualkv info` says which backends are missing.
"""
import glob
import os
import shutil
import subprocess

import numpy
from Cython.Build import cythonize
from pybind11.setup_helpers import ParallelCompile, Pybind11Extension
from setuptools import Extension, setup


def pkg_config(name):
    """(cflags, libs) of a system library, or None when pkg-config does not know it."""
    if shutil.which("pkg-config") is None:
        return None
    try:
        cflags = subprocess.check_output(["pkg-config", "--cflags", name], text=True).split()
        libs = subprocess.check_output(["pkg-config", "--libs", name], text=True).split()
    except subprocess.CalledProcessError:
        return None
    return cflags, libs


OPTIONAL_BACKENDS = (("uring", "liburing"), ("ucx", "ucx"), ("crypto", "libcrypto"))


def optional_backends():
    backends = {}
    for tag, pc_name in OPTIONAL_BACKENDS:
        if os.environ.get(f"DUALKV_NO_{tag.upper()}"):
            continue  # lets us build and test the fallbacks on a machine that has the library
        found = pkg_config(pc_name)
        if found is not None:
            backends[tag] = found
    return backends


def native_extension():
    backends = optional_backends()
    sources, cflags, libs, macros = [], [], [], []
    for path in sorted(glob.glob("cpp/**/*.cpp", recursive=True)):
        tag = os.path.splitext(os.path.basename(path))[0].rsplit("_", 1)[-1]
        if tag in dict(OPTIONAL_BACKENDS) and tag not in backends:
            continue
        sources.append(path)
    for tag, (tag_cflags, tag_libs) in backends.items():
        cflags += tag_cflags
        libs += tag_libs
        macros.append((f"DUALKV_HAVE_{tag.upper()}", "1"))
    return Pybind11Extension(
        "dualkv._C",
        sources,
        include_dirs=["include"],
        define_macros=macros,
        extra_compile_args=["-O3", "-msse4.2", "-fvisibility=hidden"] + cflags,
        extra_link_args=libs + ["-ldl", "-lpthread"],
        cxx_std=17,
    )


def cython_extensions():
    pyx = sorted(glob.glob("src/dualkv/**/*.pyx", recursive=True))
    # A plain .py with a .pxd beside it is compiled too (Cython "augmenting .pxd"): the .pxd
    # adds C types to the hot loops while the .py stays the one source, and runs as Python
    # wherever no build exists (the framework venvs). The extension shadows the .py on import.
    # (A .pxd that declares a .pyx belongs to the .pyx: its .py is the uncompiled twin.)
    pyx += sorted(p[:-4] + ".py" for p in glob.glob("src/dualkv/**/*.pxd", recursive=True)
                  if os.path.exists(p[:-4] + ".py") and not os.path.exists(p[:-4] + ".pyx"))
    exts = [
        Extension(
            os.path.splitext(os.path.relpath(p, "src"))[0].replace(os.sep, "."),
            [p],
            include_dirs=[numpy.get_include()],
            extra_compile_args=["-O3"],
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        )
        for p in pyx
    ]
    # annotation_typing off: a .py's annotations are documentation, never C types or checks
    # (only its .pxd types it), so compiled and pure-Python runs accept the same arguments.
    # nonecheck on: None where a typed object is expected raises AttributeError, as in Python,
    # instead of crashing.
    directives = {"annotation_typing": False, "nonecheck": True}
    return cythonize(exts, language_level=3, quiet=True, compiler_directives=directives) if exts else []


ParallelCompile("DUALKV_BUILD_JOBS", default=0).install()
# `make` installs the package metadata with DUALKV_SKIP_NATIVE=1 and then builds the native
# parts in place (incrementally), instead of compiling everything twice.
if os.environ.get("DUALKV_SKIP_NATIVE"):
    setup()
else:
    setup(ext_modules=[native_extension()] + cython_extensions())
