"""The ``twistd okws`` dropin (no ``__init__.py`` here: ``twisted.plugins`` is Twisted's namespace)."""

from twisted.application.service import ServiceMaker

okws = ServiceMaker(
    "okws",
    "okws_twisted.launcher.tap",
    "OKWS, the privilege-separated web server: one process per web service.",
    "okws",
)
