"""vmbuild's errors: one family, each with its place, told apart by class."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import shutil
import subprocess
from pathlib import Path

import pytest
import vmbuild
from conftest import qemu_holding
from vmbuild.errors import BuildError, ImageLockedError, UserError, VmbuildError
from vmbuild.host import qemuimg
from vmbuild.host.interrupts import Interrupted, Overran
from vmbuild.libvirt.virsh import Virsh, VirshError

#: Raised for control flow, like KeyboardInterrupt, not as errors: the CLI reports an
#: interrupt itself, and an overrun deadline becomes the plugin's PluginError.
CONTROL_FLOW = {Interrupted, Overran}


def vmbuild_exceptions() -> list[type[BaseException]]:
    found = []
    for module in pkgutil.walk_packages(vmbuild.__path__, "vmbuild."):
        if module.name.endswith("__main__"):
            continue
        for value in vars(importlib.import_module(module.name)).values():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == module.name
            ):
                found.append(value)
    return found


def test_every_error_vmbuild_defines_is_in_the_family() -> None:
    outside = [
        f"{kind.__module__}.{kind.__qualname__}"
        for kind in vmbuild_exceptions()
        if not issubclass(kind, VmbuildError)
        and kind not in CONTROL_FLOW
        and not kind.__name__.startswith("_")  # a parser's own, caught where raised
    ]
    assert outside == []
    assert {"VirshError", "DecodeError", "ImageLockedError", "PluginError"} <= {
        kind.__name__ for kind in vmbuild_exceptions()
    }


def test_the_place_is_rendered_in_front_of_the_message() -> None:
    err = BuildError("a MAC address is used twice", place='vm "web": domain XML', hint="h")
    assert err.message == "a MAC address is used twice"
    assert err.lines() == ['vm "web": domain XML: a MAC address is used twice (h)']
    assert UserError("no such profile").lines() == ["no such profile"]


def test_a_locked_image_is_an_image_locked_error(tmp_path: Path) -> None:
    image = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "16M"], check=True)
    assert not qemuimg.is_locked(image, "qcow2")
    with qemu_holding(image):
        with pytest.raises(ImageLockedError):
            qemuimg.info(image, "qcow2")
        assert qemuimg.is_locked(image, "qcow2")
        assert qemuimg.info(image, "qcow2", force_share=True).virtual_size == 16 << 20
    damaged = tmp_path / "damaged.qcow2"
    damaged.write_bytes(b"QFI\xfb" + b"\0" * 60)
    with pytest.raises(qemuimg.QemuImgError) as caught:
        qemuimg.info(damaged, "qcow2")
    assert not isinstance(caught.value, ImageLockedError)
    assert not qemuimg.is_locked(damaged, "qcow2")


@pytest.mark.skipif(shutil.which("virsh") is None, reason="virsh is not installed")
def test_a_failing_virsh_is_a_build_error() -> None:
    # libvirt's own test driver: a real virsh and a real libvirt, no daemon.
    virsh = Virsh("test:///default")
    assert virsh.state("test") == "running"
    with pytest.raises(VirshError) as caught:
        virsh.state("no-such-domain")
    assert isinstance(caught.value, BuildError)
    assert "no-such-domain" in caught.value.message
