"""The guest side: one libguestfs appliance for many disks (``appliance``, booted
with vmbuild's layer over libguestfs's own, ``supermin``), what a
golden image holds (``inspect``), file access inside a guest that never follows a
link (``files``), and disk edits as data (``diskops``, the operation types of the
plugin API, and the runner that applies them through ``files``).

A guest filesystem is only ever touched through the appliance, never mounted on the
host, and no path inside it is followed through a link. This layer may import
``vmbuild.host``, ``vmbuild.model``, ``vmbuild.errors`` and ``vmbuild.log``; it knows
nothing of plugins, bundles or libvirt.
"""
