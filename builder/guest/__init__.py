"""The guest side: one libguestfs appliance for many disks (``appliance``), what a
golden image holds (``inspect``), and disk edits as data (``diskops``, the operation
types of the plugin API).

A guest filesystem is only ever touched through the appliance, never mounted on the
host, and no path inside it is followed through a link. This layer may import
``vmbuild.host``, ``vmbuild.model``, ``vmbuild.errors`` and ``vmbuild.log``; it knows
nothing of plugins, bundles or libvirt.
"""
