"""Plugins that ship with vmbuild."""
