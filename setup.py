"""vlcurate is pure Python but for one C module, vlcurate/interleave/_speedups.c: the
interleave stage's reading-order walk over the tree selectolax's Lexbor parser builds,
and its filter of plain images. It is compiled against Lexbor's headers as shipped in the source release of the
selectolax version pyproject.toml pins: that release is fetched from the package index
once (``pip download``, the index pip is configured with) into build/, and only its
headers are used. Where it cannot be fetched or compiled, vlcurate installs without it
and the walk runs in Python (the same documents, slower): the build says so, and
``vlcurate.interleave.extract.compiled_walk_problem()`` says why.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

from setuptools import Extension, setup

HERE = Path(__file__).resolve().parent


def _selectolax_version() -> str:
    deps = tomllib.loads((HERE / "pyproject.toml").read_text())["project"]["dependencies"]
    [pin] = [d for d in deps if re.match(r"selectolax\s*==", d)]
    return pin.split("==", 1)[1].strip()


def _lexbor_headers(version: str) -> Path | None:
    """build/lexbor-<version>: the Lexbor headers of that selectolax release."""
    out = HERE / "build" / f"lexbor-{version}"
    if (out / "lexbor" / "dom" / "interfaces" / "element.h").is_file():
        return out
    sdist_dir = HERE / "build" / "sdist"
    sdist = sdist_dir / f"selectolax-{version}.tar.gz"
    if not sdist.is_file():
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
               "--dest", str(sdist_dir), f"selectolax=={version}"]
        if subprocess.run(cmd, check=False).returncode != 0 or not sdist.is_file():
            return None
    prefix = f"selectolax-{version}/lexbor/source/"
    tmp = out.with_name(out.name + ".partial")
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.startswith(prefix) and m.name.endswith(".h")]
        for m in members:
            m.name = m.name[len(prefix):]
        tar.extractall(tmp, members=members, filter="data")
    tmp.rename(out)
    return out


def _extensions() -> list[Extension]:
    version = _selectolax_version()
    try:
        headers = _lexbor_headers(version)
    except (OSError, tarfile.TarError) as e:
        headers, why = None, str(e)
    else:
        why = f"the source release of selectolax {version} could not be fetched"
    if headers is None:
        print(f"vlcurate: building without the compiled interleave walk: {why}", file=sys.stderr)
        return []
    macros = [("VLC_SELECTOLAX_VERSION", f'"{version}"'), ("LEXBOR_STATIC", None)]  # the latter as selectolax has it
    return [Extension("vlcurate.interleave._speedups", ["vlcurate/interleave/_speedups.c"],
                      include_dirs=[str(headers)], define_macros=macros, optional=True)]


setup(ext_modules=_extensions())
