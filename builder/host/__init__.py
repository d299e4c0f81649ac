"""The machine vmbuild runs on: atomic file writes and digests (``files``), free
space (``space``), signals and deadlines (``interrupts``), ``qemu-img``
(``qemuimg``) and ``ssh-keygen`` (``hostkeys``).

These know nothing of guests, plugins or bundles; they may import ``vmbuild.model``
(for the disk formats), ``vmbuild.errors`` and ``vmbuild.log``.
"""
