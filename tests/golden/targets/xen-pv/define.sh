#!/bin/sh
# Define the 2 VMs of lab "t" with libvirt's Xen driver, Xen PV (written by vmbuild).
#   sh define.sh                                  # virsh -c xen:///system
#   sh define.sh -c xen+ssh://root@xenhost/system # any virsh connection options
# Run it on the Xen host: the domain XML names each VM's disk and seed under
# /srv/labs/t, where the bundle must be. Defining again updates the domains in place.
set -eu
here=$(cd "$(dirname "$0")" && pwd -P)
[ $# -gt 0 ] || set -- -c xen:///system

missing=0
for file in \
    /srv/labs/t/vms/web/disk.qcow2 \
    /srv/golden.qcow2 \
    /srv/labs/t/vms/web/seed.iso \
    /srv/labs/t/vms/db/disk.qcow2 \
    /srv/labs/t/vms/db/seed.iso
do
    if [ ! -e "$file" ]; then
        echo "define.sh: $file is missing" >&2
        missing=1
    fi
done
if [ "$missing" != 0 ]; then
    echo "define.sh: copy the bundle to "/srv/labs/t" (and the golden image its overlays name), or export it again with that root" >&2
    exit 1
fi

virsh "$@" define "$here/web.xml"
virsh "$@" define "$here/db.xml"
virsh "$@" autostart db
