"""Boxes, the smallest example domain (docs/plugins.md follows it): create, rename, archive.
An archived box cannot be modified."""

from domain_plugins.box.domain import box, plugin

__all__ = ["box", "plugin"]
