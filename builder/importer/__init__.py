"""``vmbuild import``: a lab someone cloned by hand, read back from its libvirt domain
XML, becomes a profile. ``domxml`` reads each domain into small frozen dataclasses and
collects what is wrong with it, file by file (pure); ``netfiles`` reads the guests'
own network files (pure); ``guests`` opens every disk read-only in one libguestfs
appliance for ``--inspect``; ``writer`` turns what was read into commented profile
TOML, checked by loading and planning it (pure); ``lab`` runs them in order and
writes the file.

A sibling of ``vmbuild.build``: it may import ``vmbuild.guest``, ``vmbuild.host``,
``vmbuild.model``, ``vmbuild.output``, ``vmbuild.errors`` and ``vmbuild.log``, never
``vmbuild.build`` or ``vmbuild.cli``; only the CLI imports it.
"""
