"""Packaging for okws-twisted.

``twisted.plugins`` is listed by hand: package discovery skips it because it is
a namespace shared with Twisted itself (there is no ``__init__.py`` there).
"""

from setuptools import find_packages, setup
from setuptools.command.editable_wheel import editable_wheel


class _CompatEditable(editable_wheel):
    """Editable installs default to "compat" mode.

    setuptools' default editable mode installs an import hook that maps only
    top-level packages, which hides ``twisted/plugins/okws_plugin.py`` from
    twistd's plugin scan.  Compat mode puts the project root on ``sys.path``
    instead, where Twisted's plugin loader finds the dropin.
    """

    def initialize_options(self) -> None:
        super().initialize_options()
        self.mode = "compat"


setup(
    name="okws-twisted",
    version="0.1.0",
    description="OKWS, the privilege-separated web server, on Twisted",
    python_requires=">=3.11",
    packages=[*find_packages(include=["okws_twisted", "okws_twisted.*"]), "twisted.plugins"],
    package_data={"okws_twisted": ["templates/*.html", "templates/errors/*.html"]},
    install_requires=[
        "twisted>=24.7",
        "zope.interface",
        "pyopenssl",
        "jinja2",
    ],
    extras_require={"test": ["treq", "hypothesis", "selenium"]},
    entry_points={"console_scripts": ["okws-ctl = okws_twisted.ctl:main"]},
    cmdclass={"editable_wheel": _CompatEditable},
)
