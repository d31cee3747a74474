"""Compile the native ring ops: ``python -m tfe_lite.ops.build``.

Builds ``ring_ops.cc`` and ``dp_ops.cc`` into ``_ring_ops.so`` next to it with g++, against the TensorFlow installed in the
running interpreter and for this machine's CPU (``-march=native``: AVX-512 IFMA kernels where the CPU has
them, so the library must be rebuilt on, not copied to, another machine), and linked with glibc's
``libmvec`` where it is installed (AVX-512 log/sin/cos for ``ChaCha20Normal``). The SHA-256 of the source
is compiled in; the loader (:mod:`tfe_lite.ops`) refuses a library built from other source. Also builds
``bind_only.c`` (plain C) into ``_bind_only.so``, the ``bind()`` wrapper with which a player's gRPC server
listens on its own address only (:mod:`tfe_lite.runtime.bind`), its source's SHA-256 compiled in the same
way. Prints what it built; exits non-zero with the compiler's output when compilation fails.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "ring_ops.cc"
#: Every C++ source compiled into the one library (the first defines the source-hash symbol).
SOURCES = (SOURCE, HERE / "dp_ops.cc", HERE / "key_ops.cc", HERE / "compare_ops.cc")
LIBRARY = HERE / "_ring_ops.so"
#: The bind() wrapper that lets a player's gRPC server listen on its own address only (plain C, no TensorFlow).
BIND_SOURCE = HERE / "bind_only.c"
BIND_LIBRARY = HERE / "_bind_only.so"


def source_sha256(sources: tuple[Path, ...] = SOURCES) -> str:
    """The SHA-256 (hex) of the C++ sources (concatenated in order), as compiled into the library."""
    digest = hashlib.sha256()
    for source in sources:
        digest.update(source.read_bytes())
    return digest.hexdigest()


def _accepts(cxx: str, flag: str) -> bool:
    probe = subprocess.run([cxx, flag, "-x", "c++", "-E", "-o", os.devnull, os.devnull], capture_output=True)
    return probe.returncode == 0


def _links(cxx: str, library: str) -> bool:
    """Whether a shared library linked with ``-l<library>`` builds (e.g. glibc's libmvec is installed)."""
    with tempfile.TemporaryDirectory() as tmp:
        probe = subprocess.run(
            [cxx, "-shared", "-x", "c++", os.devnull, f"-l{library}", "-o", str(Path(tmp) / "probe.so")],
            capture_output=True,
        )
    return probe.returncode == 0


def compile_command(output: Path, sources: tuple[Path, ...] = SOURCES) -> list[str]:
    """The g++ command line that builds ``sources`` into ``output``."""
    import tensorflow as tf

    cxx = os.environ.get("CXX", "g++")
    # Eigen's AVX512-FP16 packet code does not compile with g++ 12; the ops need no fp16.
    no_fp16 = ["-mno-avx512fp16"] if _accepts(cxx, "-mno-avx512fp16") else []
    # glibc's vector math library: ChaCha20Normal's AVX-512 log/sin/cos (scalar libm without it).
    mvec = (["-DTFE_LITE_HAVE_LIBMVEC"], ["-lmvec"]) if _links(cxx, "mvec") else ([], [])
    return [
        cxx, "-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-fvisibility=hidden", *no_fp16,
        "-Wno-deprecated-declarations", *mvec[0],
        f'-DTFE_LITE_SOURCE_SHA256="{source_sha256(sources)}"',
        *tf.sysconfig.get_compile_flags(), *map(str, sources), "-o", str(output), *tf.sysconfig.get_link_flags(),
        *mvec[1],
    ]


def bind_compile_command(output: Path) -> list[str]:
    """The C compiler command line that builds the bind() wrapper into ``output``."""
    cc = os.environ.get("CC", "cc")
    return [cc, "-O2", "-shared", "-fPIC", "-fvisibility=hidden", "-Wall", "-Werror",
            f'-DTFE_LITE_BIND_SHA256="{source_sha256((BIND_SOURCE,))}"', str(BIND_SOURCE), "-o", str(output), "-ldl"]


def _compile(command_for, output: Path, what: str) -> Path:
    # Compile to a temporary file and rename it, so no process ever loads a half-written library.
    with tempfile.TemporaryDirectory(dir=output.parent) as tmp:
        partial = Path(tmp) / output.name
        command = command_for(partial)
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(
                f"Compiling {what} failed (exit {result.returncode}):\n{shlex.join(command)}\n{result.stdout}{result.stderr}"
            )
        os.replace(partial, output)
    return output


def build_bind_library(output: Path = BIND_LIBRARY) -> Path:
    """Compile the bind() wrapper into ``output``; raises ``RuntimeError`` with the compiler output on failure."""
    return _compile(bind_compile_command, output, BIND_SOURCE.name)


def build(output: Path = LIBRARY) -> Path:
    """Compile the ops library into ``output``; raises ``RuntimeError`` with the compiler output on failure."""
    return _compile(compile_command, output, " + ".join(s.name for s in SOURCES))


def main() -> int:
    start = time.perf_counter()
    try:
        path = build()
        bind_path = build_bind_library()
    except (RuntimeError, OSError) as error:
        print(error, file=sys.stderr)
        return 1
    import tensorflow as tf

    print(
        f"Built {path} ({path.stat().st_size // 1024} KiB) from {' + '.join(s.name for s in SOURCES)} sha256 {source_sha256()[:12]} "
        f"for TensorFlow {tf.__version__}, -march=native, and {bind_path} from {BIND_SOURCE.name} sha256 "
        f"{source_sha256((BIND_SOURCE,))[:12]}, in {time.perf_counter() - start:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
