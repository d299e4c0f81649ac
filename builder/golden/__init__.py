"""Golden images vmbuild makes itself from Debian's packages: the recipe and where
its image is cached (``recipe``: pure but for reading the host's apt sources and
hashing a cached image), and the builder that runs ``debootstrap`` and writes the
disk in one appliance (``builder``).

It may import ``vmbuild.guest``, ``vmbuild.host``, ``vmbuild.model``,
``vmbuild.errors`` and ``vmbuild.log``; the build's base stage calls it.
"""
