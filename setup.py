"""Build ringcomm's optional compiled core (ringcomm/_native.c); all else is in pyproject.toml.

The extension is optional: where no C compiler works, the build warns and the package
installs without it, running its pure-Python path (`ringcomm bench` says which path ran).
"""

import os

from setuptools import Extension, setup

ext = Extension("ringcomm._native", ["ringcomm/_native.c"], optional=True)
setup(ext_modules=[] if os.environ.get("RINGCOMM_BUILD_NATIVE") == "0" else [ext])
