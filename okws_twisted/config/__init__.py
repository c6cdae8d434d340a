"""The site's configuration (OKWS's okws_config), used by every process.

The launcher reads the operator's ini file once (L{load}) and hands each child the validated
L{SiteConfig} as JSON; no other process reads the file.  Pure logic: stdlib only.

    - L{okws_twisted.config.reading}: the ini file, and its errors as L{ConfigError};
    - L{okws_twisted.config.site}: the site's values (L{SiteConfig}, L{ServiceConfig});
    - L{okws_twisted.config.listeners}: the listeners (L{Listener}) and trusted networks.
"""

from okws_twisted.config.errors import ConfigError
from okws_twisted.config.listeners import (
    DEFAULT_LISTEN,
    DEFAULT_PROXY_TRUSTED,
    PROXY_PREFIX,
    Listener,
    is_trusted,
    parse_listener,
    trusted_networks,
)
from okws_twisted.config.reading import load, parse, short_control_socket
from okws_twisted.config.site import (
    ACCESS_FIELDS,
    COMBINED,
    ISOLATIONS,
    ServiceConfig,
    SiteConfig,
    host_pattern_matches,
    normalize_host,
    normalize_path,
    parse_access_fields,
)

__all__ = [
    "ACCESS_FIELDS",
    "COMBINED",
    "ConfigError",
    "DEFAULT_LISTEN",
    "DEFAULT_PROXY_TRUSTED",
    "ISOLATIONS",
    "Listener",
    "PROXY_PREFIX",
    "ServiceConfig",
    "SiteConfig",
    "host_pattern_matches",
    "is_trusted",
    "load",
    "normalize_host",
    "normalize_path",
    "parse",
    "parse_access_fields",
    "parse_listener",
    "short_control_socket",
    "trusted_networks",
]
