"""The golden image's initramfs check, on both ways Debian packages its cloud kernel:
bookworm's 6.1 has the virtio drivers as modules (.ko), trixie's 6.12 builds some
in (modules.builtin) and compresses the rest (.ko.xz)."""

from __future__ import annotations

from vmbuild.golden.builder import initramfs_missing

BOOKWORM = """\
usr/lib/modules/6.1.0-40-cloud-amd64/kernel/drivers/block/virtio_blk.ko
usr/lib/modules/6.1.0-40-cloud-amd64/kernel/drivers/virtio/virtio_pci.ko
usr/lib/modules/6.1.0-40-cloud-amd64/kernel/drivers/scsi/virtio_scsi.ko
usr/sbin/fsck.ext4
"""
TRIXIE = """\
usr/lib/modules/6.12.57+deb13-cloud-amd64/kernel/drivers/scsi/virtio_scsi.ko.xz
usr/sbin/fsck.ext4
"""


def test_the_initramfs_check_reads_modules_built_in_and_compressed() -> None:
    assert initramfs_missing(BOOKWORM, set()) == []
    assert initramfs_missing(TRIXIE, {"virtio_blk", "virtio_pci"}) == []
    assert initramfs_missing(TRIXIE, {"virtio_blk"}) == ["virtio_pci.ko"]
    assert initramfs_missing(
        TRIXIE.replace("usr/sbin/fsck.ext4\n", ""), {"virtio_blk", "virtio_pci"}
    ) == ["fsck.ext4"]
    assert initramfs_missing("", set()) == [
        "virtio_blk.ko",
        "virtio_pci.ko",
        "virtio_scsi.ko",
        "fsck.ext4",
    ]
