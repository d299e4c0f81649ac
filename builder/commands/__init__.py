"""Commands beside the build: ``vmbuild doctor`` (can this machine build and boot a
lab?) and ``vmbuild check`` (do a built lab's VMs run with the identities they were
given?). Later commands that drive a deployed lab go here too.

A sibling of ``vmbuild.build``; it may import every layer below the build.
"""
