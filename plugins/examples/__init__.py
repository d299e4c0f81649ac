"""Example plugins: copy one next to a lab's profile and list it under ``plugins``, or
name the module (``plugins = ["vmbuild_plugins.examples.motd"]``)."""
