"""The build: the stages that turn a plan into a bundle (``pipeline``), the base stage
that resolves and checks the golden image (``base``), and the identity stage that
writes every VM's identity in one appliance (``customize``).

This is the only layer that decides what to keep, make or refresh. It may import
every layer below it (``output``, ``golden``, ``plugins``, ``guest``, ``libvirt``,
``host``, ``model``); only the command line imports it.
"""
