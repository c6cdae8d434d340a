"""
okws-twisted: OKWS, the privilege-separated web server, on Twisted.

The public face for service authors is L{ServiceResource}; testing helpers are
in L{okws_twisted.testing}. Importing this package installs no reactor and
loads no templating, so any process role may import it cheaply.
"""

from okws_twisted.resource import ServiceResource

__all__ = ["ServiceResource", "__version__"]

__version__ = "0.1.0"
