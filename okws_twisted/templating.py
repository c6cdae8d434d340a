# -*- test-case-name: tests.service.test_rendering -*-
"""
The jinja2 environment okws renders with, shared by the template publisher (pubd: the site's
error pages) and the service processes (their pages), so both escape the same way.

Autoescaping is on for C{.html}, C{.htm} and C{.xml} templates and off for every other name.
Undefined variables follow jinja2's default: C{{{ missing }}} renders as nothing and
C{{% if missing %}} is false, but using one (C{missing.attr}, C{missing + 1}, iterating it) is
an error.  Every failure reaches the caller as a L{TemplateFailure} naming the template and
line.  The service's asynchronous renderer is L{okws_twisted.service.rendering}.
"""

from __future__ import annotations

# jinja2 imports these lazily (a string literal in a template, any template
# error); a process jailed after start-up could not, so import them now.
import encodings.unicode_escape  # noqa: F401
import importlib.resources
from types import TracebackType
from typing import Callable, Mapping, Protocol

import jinja2.debug  # noqa: F401
from jinja2 import (
    BaseLoader,
    ChoiceLoader,
    Environment,
    TemplateNotFound,
    TemplateSyntaxError,
    select_autoescape,
)
from twisted.python.failure import Failure

# The failures are defined with ITemplates (a service tells them apart without jinja2); named here too.
from okws_twisted.interfaces import PublisherUnavailable, TemplateBroken, TemplateFailure, TemplateMissing  # noqa: F401
from okws_twisted.wire.errorpage import MESSAGE_MARKER, STATUSES, phrase
from okws_twisted.wire.templatechannel import Source, TemplateAbsent


class TemplateReader(Protocol):
    """Anything that reads a template by name, as L{okws_twisted.pubd.tree.TemplateTree} does."""

    def read(self, name: str) -> Source:
        """The template's source; raise L{TemplateAbsent} if there is none."""


def make_environment(loader: BaseLoader) -> Environment:
    """The jinja2 environment okws renders with, over C{loader}."""
    return Environment(
        loader=loader,
        autoescape=select_autoescape(enabled_extensions=("html", "htm", "xml"), default_for_string=True, default=False),
        auto_reload=True,
    )


def template_position(error: BaseException) -> tuple[str | None, int | None]:
    """The template and line an error raised by jinja2 points at.

    A syntax error says so itself; an error while rendering carries a
    traceback that jinja2 rewrote so the template's frames name the template
    and its line (the innermost such frame is the one that failed).
    """
    if isinstance(error, TemplateSyntaxError):
        return error.name or error.filename, error.lineno
    found: tuple[str | None, int | None] = (None, None)
    tb: TracebackType | None = error.__traceback__
    while tb is not None:
        frame_globals = tb.tb_frame.f_globals
        if "__jinja_exception__" in frame_globals:
            found = (frame_globals.get("__file__"), tb.tb_lineno)
        tb = tb.tb_next
    return found


def broken(error: BaseException, cause: Failure | None = None, fallback: str | None = None) -> TemplateBroken:
    """The L{TemplateBroken} for an error jinja2 raised."""
    template, lineno = template_position(error)
    message = error.message if isinstance(error, TemplateSyntaxError) and error.message else str(error)
    return TemplateBroken(f"{type(error).__name__}: {message}", template or fallback, lineno, cause)


class TreeLoader(BaseLoader):
    """jinja2's view of a template tree (L{okws_twisted.pubd.tree.TemplateTree}): the files themselves, read at each load."""

    def __init__(self, tree: TemplateReader) -> None:
        self.tree = tree

    def get_source(self, environment: Environment, template: str) -> tuple[str, str, Callable[[], bool]]:
        try:
            source = self.tree.read(template)
        except TemplateAbsent as e:
            raise TemplateNotFound(template, f"{template}: {e.reason}") from None
        return source.text, template, lambda: False


class MappingLoader(BaseLoader):
    """jinja2's view of a mapping from template name to source.

    Unlike jinja2's C{DictLoader} it gives each template its name as file
    name, so errors in it point at the template by name.
    """

    def __init__(self, sources: Mapping[str, str]) -> None:
        self.sources = dict(sources)

    def get_source(self, environment: Environment, template: str) -> tuple[str, str, Callable[[], bool]]:
        if template not in self.sources:
            raise TemplateNotFound(template)
        return self.sources[template], template, lambda: True


# -- the site's error pages


def default_error_templates() -> dict[str, str]:
    """The error page templates shipped in the package, by template name."""
    folder = importlib.resources.files("okws_twisted").joinpath("templates", "errors")
    out = {}
    for entry in folder.iterdir():
        if entry.name.endswith(".html"):
            out[f"errors/{entry.name}"] = entry.read_text(encoding="utf-8")
    return out


def render_error_pages(
    site: BaseLoader | None, defaults: Mapping[str, str]
) -> tuple[dict[int, str], list[TemplateFailure]]:
    """Render C{errors/<status>.html} for every status okws answers itself.

    Each page comes from the site's templates (C{site}) where it has one,
    from C{defaults} otherwise; a site page that fails falls back to the
    default and its failure is returned for the log.  The context is
    C{status}, C{phrase} and C{message}, which is L{MESSAGE_MARKER}: the
    real message is put in per response.
    """
    fallback = make_environment(MappingLoader(defaults))
    loaders: list[BaseLoader] = [site] if site is not None else []
    env = make_environment(ChoiceLoader([*loaders, MappingLoader(defaults)]))
    pages: dict[int, str] = {}
    problems: list[TemplateFailure] = []
    for status in STATUSES:
        name = f"errors/{status}.html"
        context = {"status": status, "phrase": phrase(status), "message": MESSAGE_MARKER}
        try:
            pages[status] = env.get_template(name).render(context)
            continue
        except TemplateNotFound as e:
            where, lineno = template_position(e)
            problems.append(TemplateMissing(f"template {e.name!r} not found", where or name, lineno))
        except Exception as e:
            problems.append(broken(e, Failure(), name))
        try:
            pages[status] = fallback.get_template(name).render(context)
        except Exception as e:
            problems.append(broken(e, Failure(), name))
    return pages, problems
