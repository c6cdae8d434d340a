"""Packaging for okws-twisted: the metadata is in pyproject.toml.

This file only makes editable installs default to setuptools' "compat" mode
(pyproject.toml has no key for that): the default mode installs an import
hook that maps only top-level packages, which hides
``twisted/plugins/okws_plugin.py`` from twistd's plugin scan.  Compat mode
puts the project root on ``sys.path`` instead, where Twisted's plugin loader
finds the dropin.
"""

from setuptools import setup
from setuptools.command.editable_wheel import editable_wheel


class _CompatEditable(editable_wheel):
    def initialize_options(self) -> None:
        super().initialize_options()
        self.mode = "compat"


setup(cmdclass={"editable_wheel": _CompatEditable})
