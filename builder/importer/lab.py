"""``vmbuild import``, from the files to the profile: read and check every domain's
XML, learn each disk's size and backing file (``qemu-img info``), read the guests
with ``--inspect``, write the profile's text, and save it.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from vmbuild.errors import BuildError, UserError
from vmbuild.host import qemuimg
from vmbuild.host.files import write_atomic
from vmbuild.importer import writer
from vmbuild.importer.domxml import MIB, Domain, Finding, ImportProblems, check_lab, parse_domain
from vmbuild.importer.netfiles import GuestNet
from vmbuild.importer.writer import LabInput, VmInput
from vmbuild.model.profile import SETTINGS, escape_controls, format_size

#: The file name that means standard input (for DOMAIN.xml) or output (for -o).
STDIO = "-"
#: What a golden image's format may be.
_BASE_FORMATS = ("qcow2", "raw")


@dataclass(frozen=True)
class Imported:
    text: str
    name: str
    vms: int
    #: Warnings, each naming its file: printed, the profile still written.
    warnings: tuple[Finding, ...]


@dataclass(frozen=True)
class _DiskFacts:
    size: int | None
    note: str
    backing: str | None
    backing_format: str | None
    readable: bool


def _read(file: str) -> tuple[bytes | None, Finding | None]:
    if file == STDIO:
        return sys.stdin.buffer.read(), None
    try:
        return Path(file).read_bytes(), None
    except FileNotFoundError:
        return None, Finding(file, "no such file")
    except IsADirectoryError:
        return None, Finding(file, "is a folder, not a domain's XML")
    except OSError as err:
        return None, Finding(file, f"cannot be read: {err.strerror}")


def _disk(domain: Domain, findings: list[Finding]) -> _DiskFacts:
    """The disk's size and backing file, from qemu-img when the file is here."""
    disk = domain.disk
    path = Path(disk.path)
    if not path.is_file():
        state = "is not on this host" if not path.exists() else "is not a regular file"
        return _DiskFacts(None, f"{disk.path} {state}", disk.backing, disk.backing_format, False)
    try:
        info = qemuimg.info(path, disk.format, force_share=True)
    except BuildError as err:
        message = f"its disk cannot be read as {disk.format}: {err.message}"
        findings.append(Finding(domain.file, message, vm=domain.name, error=False))
        note = f"qemu-img cannot read {disk.path}"
        return _DiskFacts(None, note, disk.backing, disk.backing_format, False)
    size = info.virtual_size
    if size % MIB or size < MIB:
        rounded = max(MIB, -(-size // MIB) * MIB)
        findings.append(
            Finding(
                domain.file,
                f"its disk's size, {size} bytes, is not a whole number of MiB: the profile "
                f"gives it {format_size(rounded)}",
                vm=domain.name,
                error=False,
            )
        )
        size = rounded
    backing, backing_format = disk.backing, disk.backing_format
    if backing is None and info.backing_file:
        backing = str((path.parent / info.backing_file).absolute())
        backing_format = backing_format or info.backing_format
    return _DiskFacts(size, "", backing, backing_format, True)


def lab_name(name: str | None, domains: Sequence[Domain], output: str | None) -> tuple[str, str]:
    """The lab's name and where it came from (for its comment)."""
    if name is not None:
        try:
            SETTINGS["lab"]["name"].parse(name)
        except ValueError as err:
            raise UserError(f"--name {escape_controls(name)!r} {err}") from None
        if "{" in name or "}" in name:
            raise UserError(f"--name {escape_controls(name)!r} may not contain braces")
        return name, ""
    built = {domain.vmbuild_lab for domain in domains}
    if len(built) == 1 and None not in built:
        found = built.pop()
        assert found is not None
        if _fits(found):
            return found, "the lab vmbuild built these VMs for"
    if output is not None and output != STDIO:
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(output).stem).strip("-._")[:63]
        if _fits(stem):
            return stem, f"guess: from {Path(output).name}; --name sets another"
    names = [domain.name for domain in domains]
    prefix = names[0]
    for other in names[1:]:
        while not other.startswith(prefix):
            prefix = prefix[:-1]
    prefix = prefix.rstrip("0123456789-_.")
    if _fits(prefix) and len(prefix) > 1:
        return prefix, "guess: from the VMs' names; --name sets another"
    return "imported", "guess: --name sets another"


def _fits(name: str) -> bool:
    try:
        SETTINGS["lab"]["name"].parse(name)
    except ValueError:
        return False
    return "{" not in name


def _base(first: Domain, facts: _DiskFacts, findings: list[Finding]) -> tuple[str, str, str]:
    """The golden image: the first VM's disk, or the file its disk was made from."""
    if facts.backing is not None:
        fmt = facts.backing_format or "qcow2"
        note = (
            f"guess: {first.name}'s disk is an overlay on this image, the one its disk was "
            "made from; point it at your template image if that is another"
        )
        if facts.backing_format is None:
            note += "; the format is a guess too (qemu-img info tells)"
        return facts.backing, fmt, note
    if first.disk.format not in _BASE_FORMATS:
        findings.append(
            Finding(
                first.file,
                f"its disk is {first.disk.format}, and vmbuild's golden image is qcow2 or raw",
                f"convert it: qemu-img convert -O qcow2 {first.disk.path} golden.qcow2",
                first.name,
            )
        )
    return (
        first.disk.path,
        first.disk.format,
        f"guess: {first.name}'s own disk. Point it at your template image: the shut-down VM "
        "you cloned the others from",
    )


def import_lab(
    files: Sequence[str],
    *,
    inspect: bool = False,
    name: str | None = None,
    output: str | None = None,
) -> Imported:
    """The profile for the domains of ``files``. Raises ImportProblems listing every
    error (and the warnings) when the XML has any."""
    if sum(file == STDIO for file in files) > 1:
        raise UserError("standard input (-) can be read only once")
    findings: list[Finding] = []
    domains: list[Domain] = []
    for file in files:
        data, problem = _read(file)
        if problem is not None:
            findings.append(problem)
            continue
        assert data is not None
        domain, found = parse_domain(data, "<stdin>" if file == STDIO else file)
        findings += found
        if domain is not None:
            domains.append(domain)
    findings += check_lab(domains)
    order = {"<stdin>" if f == STDIO else f: index for index, f in enumerate(files)}
    findings.sort(key=lambda finding: order.get(finding.file, len(order)))
    if any(f.error for f in findings) or not domains:
        raise ImportProblems(findings)
    domains.sort(key=lambda domain: _natural(domain.name))
    disks = [_disk(domain, findings) for domain in domains]
    base = _base(domains[0], disks[0], findings)
    if any(f.error for f in findings):
        raise ImportProblems(findings)
    name_, name_note = lab_name(name, domains, output)
    guests: dict[str, GuestNet] = {}
    if inspect:
        from vmbuild.importer.guests import GuestDisk, read_guests

        wanted = [
            GuestDisk(d.name, Path(d.disk.path), d.disk.format, d.nic.mac if d.nic else None)
            for d, facts in zip(domains, disks, strict=True)
            if facts.readable
        ]
        for domain, facts in zip(domains, disks, strict=True):
            if not facts.readable:
                note = f"not inspected: {facts.note}"
                findings.append(Finding(domain.file, note, vm=domain.name, error=False))
        guests, notes = read_guests(wanted)
        by_name = {domain.name: domain for domain in domains}
        findings += [Finding(by_name[vm].file, note, vm=vm, error=False) for vm, note in notes]
    lab = LabInput(
        name=name_,
        name_note=name_note,
        vms=tuple(
            VmInput(
                domain=domain,
                disk_size=facts.size,
                disk_note=facts.note,
                guest=guests.get(domain.name),
                full_copy=facts.backing is None,
            )
            for domain, facts in zip(domains, disks, strict=True)
        ),
        base_image=base[0],
        base_format=base[1],
        base_note=base[2],
        inspected=inspect,
        output=None if output in (None, STDIO) else output,
    )
    written = writer.write(lab)
    by_name = {domain.name: domain for domain in domains}
    findings += [
        Finding(by_name[vm].file, message, vm=vm, error=False) for vm, message in written.warnings
    ]
    return Imported(written.text, name_, len(domains), tuple(findings))


def _natural(name: str) -> list[tuple[int, int | str]]:
    """slave2 before slave10: numbers compared as numbers."""
    return [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", name)]


def check_output(output: str, force: bool) -> None:
    """Refuse an output file that exists (unless ``force``), or that cannot be made."""
    if output == STDIO:
        return
    path = Path(output)
    if path.is_dir():
        raise UserError("is a folder", place=output, hint="give the profile's file name")
    if (path.exists() or path.is_symlink()) and not force:
        raise UserError("exists already", place=output, hint="--force replaces it")
    if not path.parent.is_dir():
        raise UserError(f"its folder {path.parent} does not exist", place=output)


def save(output: str, text: str) -> None:
    """Write the profile whole or not at all (stdout for ``-``)."""
    if output == STDIO:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    write_atomic(Path(output), text.encode())
