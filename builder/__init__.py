"""vmbuild: build whole libvirt VM labs ahead of time from one TOML profile."""

__version__ = "0.1.0"
