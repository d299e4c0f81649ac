"""libvirt: ``virsh`` and the QEMU guest agent (``virsh``), and which running domains
hold a disk (``inuse``, through the python3-libvirt binding, read-only).

A sibling of ``vmbuild.guest``: neither imports the other. It may import
``vmbuild.host``, ``vmbuild.model``, ``vmbuild.errors`` and ``vmbuild.log``; the
deploy targets of later commands build on it.
"""
