"""What a bundle is made of: seed ISOs (``seed``), domain XML (``domain``), the
templates and their renderer (``render``), and the bundle on disk with its lock,
staging folder, checksums and atomic publish (``bundle``).

Each function turns the plan into bytes or puts bytes in place; none decides what to
rebuild. It may import ``vmbuild.plugins`` and the layers below it, never
``vmbuild.build`` or ``vmbuild.golden``.
"""
