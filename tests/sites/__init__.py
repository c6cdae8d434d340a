"""Services used only by the end-to-end tests (imported as ``tests.sites.*``)."""
