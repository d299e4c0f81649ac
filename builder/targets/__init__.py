"""Other hypervisors' labs, exported from a built libvirt bundle.

A bundle always holds the libvirt lab: each VM's disk with its identity inside, its
NoCloud seed and its domain XML. A target reads that bundle (its ``plan.json`` and
files) and writes what another hypervisor defines a lab from: Xen's domain XML and
``xl`` configs, Hyper-V's VHDX disks and a PowerShell script, VMware's OVA and
``.vmx`` with VMDK disks. Every target keeps the lab's identity as the plan has it:
names, MACs, addresses, consoles, CPUs, memory and disk sizes.

Owns: the writers, one module per hypervisor, and the job they share (``job``).
May import: the model, the host's tools (``vmbuild.host``), errors and log; never
the build, which calls it, nor libvirt or libguestfs.
"""
