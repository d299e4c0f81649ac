#!/bin/sh
# Start the 2 VMs of lab "t" with Xen's xl toolstack, Xen PV (written by vmbuild).
#   sh create.sh
# xl keeps no stopped domains: "xl create" starts a VM from its .cfg, and running
# this again starts the VMs that are not running. Run it on the Xen host: the
# configs name each VM's disk and seed under /srv/labs/t, where the bundle must be.
set -eu
here=$(cd "$(dirname "$0")" && pwd -P)

missing=0
for file in \
    /srv/labs/t/vms/web/disk.qcow2 \
    /srv/golden.qcow2 \
    /srv/labs/t/vms/web/seed.iso \
    /srv/labs/t/vms/db/disk.qcow2 \
    /srv/labs/t/vms/db/seed.iso
do
    if [ ! -e "$file" ]; then
        echo "create.sh: $file is missing" >&2
        missing=1
    fi
done
if [ "$missing" != 0 ]; then
    echo "create.sh: copy the bundle to "/srv/labs/t" (and the golden image its overlays name), or export it again with that root" >&2
    exit 1
fi

bridge=br-lab
if ! ip link show "$bridge" >/dev/null 2>&1; then
    echo "create.sh: the bridge $bridge is missing: make it (or name another in each vif) first" >&2
    exit 1
fi

# xendomains starts the configs in this folder when the host boots.
auto=${XENDOMAINS_AUTO:-/etc/xen/auto}

if xl domid web >/dev/null 2>&1; then
    echo "create.sh: web is running already" >&2
else
    xl create "$here/web.cfg"
fi
if xl domid db >/dev/null 2>&1; then
    echo "create.sh: db is running already" >&2
else
    xl create "$here/db.cfg"
fi
if [ -d "$auto" ]; then
    ln -sfn "$here/db.cfg" "$auto/db.cfg"
fi
