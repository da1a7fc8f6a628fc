"""Example domains shipped with Chronicle, each a plugin (see docs/plugins.md)."""
