"""Plugins: the hook specifications (``hookspecs``, the plugin API together with
``vmbuild.guest.diskops`` and ``vmbuild.model``) and the pluggy manager that loads
built-in, installed and per-lab plugins and calls them (``manager``).

It may import ``vmbuild.guest`` (for the operation types), ``vmbuild.host``,
``vmbuild.model``, ``vmbuild.errors`` and ``vmbuild.log``, never the build or its
outputs.
"""
