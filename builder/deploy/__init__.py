"""Running a lab on libvirt hosts: ``deploy`` sends a bundle's VMs to the hosts its
profile places them on, through libvirt's API only (storage volumes streamed into
each host's pool, domains defined with vmbuild's metadata), and ``lifecycle``
drives the deployed lab as a whole (up, down, suspend, resume, reset, destroy,
status).

Above the build stages, the artifact code and the commands: it may import any of
them, and everything below; only the CLI imports it.
"""
