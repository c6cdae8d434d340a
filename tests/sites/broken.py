"""A module that fails to import: the start-up check must say so."""

raise RuntimeError("this module is broken on purpose")
