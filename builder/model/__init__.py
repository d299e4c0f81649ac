"""The pure model: the profile as it was written (``profile``), the plan that derives
every VM's identity from it (``plan``), what inspection found in a golden image
(``facts``), the text both sides of a lab agree on (``hosts``, ``netconfig``), and
the JSON round trip of all their dataclasses (``codec``).

Nothing here does I/O beyond reading the profile file, talks to libguestfs or
libvirt, or runs a program; it may import only ``vmbuild.errors``. Every other layer
imports it.
"""
