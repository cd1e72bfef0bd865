"""Build ringcomm's optional compiled core (ringcomm/csrc/); all else is in pyproject.toml.

The extension is optional: where no C compiler works, the build warns and the package
installs without it, running its pure-Python path (`ringcomm bench` says which path ran).
The module is ringcomm._native; its sources are in ringcomm/csrc/ (a folder of another name,
so that it never shadows the module). The headers are listed as `depends`: a change to one
rebuilds the module, and setuptools ships them in the sdist with the sources.
"""

import os
from glob import glob

from setuptools import Extension, setup

CSRC = "ringcomm/csrc"
ext = Extension(
    "ringcomm._native",
    sorted(glob(f"{CSRC}/*.c")),
    depends=sorted(glob(f"{CSRC}/*.h")),
    optional=True,
)
setup(ext_modules=[] if os.environ.get("RINGCOMM_BUILD_NATIVE") == "0" else [ext])
