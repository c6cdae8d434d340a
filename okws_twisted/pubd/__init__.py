"""The template publisher (OKWS's pubd): the only reader of the site's templates.

Service instances ask it for templates by name over a templates channel
(L{okws_twisted.wire.templatechannel}) and hear when one changes on disk; it renders the site's
error pages and pushes them to the dispatcher and the services.
"""

from typing import TYPE_CHECKING

from okws_twisted.faces import lazy_face

__all__ = ["Publisher", "start_role"]

if TYPE_CHECKING:
    from okws_twisted.pubd.publisher import Publisher, start_role

__getattr__ = lazy_face(__name__, {"Publisher": "publisher", "start_role": "publisher"})
