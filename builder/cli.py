"""The vmbuild command. Results go to stdout, progress and errors to stderr.

Exit codes: 0 success, 2 bad input (profile, options), 3 build failure,
4 another build of the lab is running, 5 `check` found a VM that differs from its
bundle, 130 interrupted, 1 a bug (with traceback).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import json
import stat
import sys
import traceback
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer
from vmbuild import __version__, log
from vmbuild.artifact.trust import Trust
from vmbuild.errors import ExitCode, UserError, VmbuildError
from vmbuild.host import interrupts
from vmbuild.host.interrupts import Interrupted
from vmbuild.model.plan import Plan, make_plan

if TYPE_CHECKING:
    from vmbuild.artifact.unpack import UnpackResult
from vmbuild.model.profile import Profile, format_size, load_profile

app = typer.Typer(
    name="vmbuild",
    help=(
        "Build a whole libvirt VM lab ahead of time from one TOML profile: per-VM disks "
        "(qcow2 overlays on a golden image), cloud-init NoCloud seed ISOs and domain XML "
        "that `virsh define` accepts, published as one bundle in OUTPUT/<lab>/.\n\n"
        "`vmbuild PROFILE` is short for `vmbuild build PROFILE`."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

ProfileArg = Annotated[
    Path,
    typer.Argument(
        metavar="PROFILE",
        help="The lab profile (TOML). Paths inside it are relative to its folder.",
        show_default=False,
    ),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        metavar="KEY=VALUE",
        help=(
            "Override a profile key by its dotted path, e.g. --set lab.domain_type=qemu "
            "or --set vm.db.memory=4G ([[vm]] entries by their name or position). "
            "VALUE is read as TOML when it parses, else as a string. Repeatable."
        ),
        show_default=False,
    ),
]
BaseOpt = Annotated[
    Path | None,
    typer.Option(
        "--base",
        metavar="PATH",
        help="Use this golden image instead of the profile's (its sha256 pin is dropped).",
        show_default=False,
    ),
]
BundleArg = Annotated[
    Path,
    typer.Argument(
        metavar="BUNDLE",
        help="A built lab's folder (OUTPUT/<lab>), with its manifest.json.",
        show_default=False,
    ),
]
OutputOpt = Annotated[
    Path,
    typer.Option("--output", "-o", metavar="DIR", help="Where bundles go: DIR/<lab>/."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
VerboseOpt = Annotated[
    int,
    typer.Option(
        "--verbose",
        "-v",
        count=True,
        help="Show every operation, and a failing plugin's traceback (repeatable).",
    ),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Show errors only.")]
ConnectOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--connect",
        "-c",
        metavar="[HOST=]URI",
        help="libvirt URI of the local host (default: the profile's [hosts.local], else "
        "$LIBVIRT_DEFAULT_URI, else qemu:///system), or HOST=URI for a host the profile "
        "names, for this run. Repeatable.",
        show_default=False,
    ),
]


def _version(value: bool) -> None:
    if value:
        print(f"vmbuild {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = False,
) -> None:
    """Build a whole libvirt VM lab ahead of time from one TOML profile."""


F = TypeVar("F", bound=Callable[..., Any])


def reporting(command: F) -> F:
    """Turn vmbuild's errors into messages and exit codes; the one place that does."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except VmbuildError as err:
            if err.__cause__ is not None and log.verbosity() >= 2:
                traceback.print_exception(err.__cause__, file=sys.stderr)
            for line in err.lines():
                print(f"vmbuild: error: {line}", file=sys.stderr)
            raise typer.Exit(int(err.exit_code)) from None
        except (KeyboardInterrupt, Interrupted) as err:
            published = err.published if isinstance(err, Interrupted) else None
            if published is not None:
                print(
                    f"vmbuild: interrupted after the bundle {published} was published",
                    file=sys.stderr,
                )
            else:
                print("vmbuild: interrupted; nothing was published", file=sys.stderr)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _adding_options(
    options: dict[str, tuple[Any, Any]],
    prepare: Callable[[dict[str, Any]], dict[str, Any]],
    replaces: tuple[str, ...] = (),
) -> Callable[[F], F]:
    """Give a command typer options that it does not declare itself.

    ``options`` maps each added parameter to its annotation and default (``...``
    for a required one). The wrapper takes their values off the call and hands
    them to ``prepare``, whose result (keyword arguments, which replace the
    command's own parameters of those names, or those named in ``replaces``) goes
    to the command.
    """

    def decorate(command: F) -> F:
        hints = typing.get_type_hints(command, include_extras=True)
        signature = inspect.signature(command)
        added = [
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=inspect.Parameter.empty if default is ... else default,
                annotation=hint,
            )
            for name, (hint, default) in options.items()
        ]
        replaced = {p.name for p in added} | set(replaces)
        required = [p for p in added if p.default is inspect.Parameter.empty]
        optional = [p for p in added if p.default is not inspect.Parameter.empty]
        own = [
            p.replace(
                kind=inspect.Parameter.KEYWORD_ONLY,
                annotation=hints[p.name] if isinstance(p.annotation, str) else p.annotation,
            )
            for p in signature.parameters.values()
            if p.name not in replaced
        ]

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            values = {name: kwargs.pop(name) for name in options if name in kwargs}
            return command(**kwargs, **prepare(values))

        wrapper.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[*required, *own, *optional], return_annotation=None
        )
        return wrapper  # type: ignore[return-value]

    return decorate


def log_options(*, quiet: bool = False) -> Callable[[F], F]:
    """The shared -v (and, with ``quiet``, -q): the verbosity is set before the
    command runs, and before `reporting` reads it on a failure."""

    def set_verbosity(values: dict[str, Any]) -> dict[str, Any]:
        log.set_verbosity(0 if values.get("quiet") else 1 + values["verbose"])
        return {}

    options: dict[str, tuple[Any, Any]] = {"verbose": (VerboseOpt, 0)}
    if quiet:
        options["quiet"] = (QuietOpt, False)
    return _adding_options(options, set_verbosity)


def profile_options(*, base: bool = True) -> Callable[[F], F]:
    """The shared PROFILE argument, --set and (with ``base``) --base: the command
    receives the loaded `Profile` as its ``profile`` parameter."""

    def load(values: dict[str, Any]) -> dict[str, Any]:
        overrides = values["overrides"] or ()
        return {"profile": load_profile(values["profile"], overrides, values.get("base"))}

    options: dict[str, tuple[Any, Any]] = {"profile": (ProfileArg, ...)}
    if base:
        options["base"] = (BaseOpt, None)
    options["overrides"] = (SetOpt, None)
    return _adding_options(options, load)


@app.command()
@reporting
@log_options(quiet=True)
@profile_options()
def build(
    profile: Profile,
    output: OutputOpt = Path("output"),
    as_json: JsonOpt = False,
    force: Annotated[
        bool,
        typer.Option("--force", help="Rebuild every disk, even those whose inputs are unchanged."),
    ] = False,
    appliances: Annotated[
        int | None,
        typer.Option(
            "--appliances",
            min=1,
            help="How many libguestfs appliances edit the disks at once (default: one per "
            "core, as memory allows, with at least 4 disks each; or VMBUILD_APPLIANCES).",
        ),
    ] = None,
) -> None:
    """Build the lab: disks, seed ISOs, domain XML, manifest, define.sh.

    The bundle is built beside OUTPUT/<lab> and swapped in only when complete, so a
    failed or interrupted build leaves the previous bundle untouched. Prints the
    bundle's path (or, with --json, its manifest) on stdout.

    Every new disk gets its identity in libguestfs appliances that each edit many
    disks per launch (up to 127); a big lab is dealt out to several appliances that
    run at once.
    """
    from vmbuild.build.pipeline import build as run_build
    from vmbuild.plugins.manager import load_plugins

    plugins = load_plugins(profile)
    plan = make_plan(profile, plugins)
    _warn_placement(plan)
    result = run_build(
        plan, plugins, output, source=profile.path, force=force, appliances=appliances
    )
    if log.verbosity() > 0:
        _warn_unreachable(result.bundle, result.manifest)
    if as_json:
        print(json.dumps(result.manifest, indent=2))
    else:
        if result.changed:
            kept = len(result.plan.vms) - len(result.rebuilt)
            log.info(
                f"Built {len(result.plan.vms)} VMs ({len(result.rebuilt)} disks made, "
                f"{kept} kept); define them with: sh {result.bundle}/define.sh"
            )
        print(result.bundle)


def _warn_placement(plan: Plan) -> None:
    from vmbuild.model.plan import placement_warnings

    for warning in placement_warnings(plan):
        log.warn(warning)


def _warn_unreachable(bundle: Path, manifest: dict[str, Any]) -> None:
    """Say so when libvirt's unprivileged QEMU could not reach the disks or the image
    behind them: the VMs would be defined but would not start."""
    from vmbuild.libvirt.virsh import unreachable_for_qemu

    disks = [bundle / vm["artifacts"]["disk"]["file"] for vm in manifest["vms"].values()]
    blocked = unreachable_for_qemu([*disks[:1], Path(manifest["base"]["path"])])
    for line in blocked:
        log.warn(
            f"{line}, which other users cannot enter: under qemu:///system, libvirt runs "
            "QEMU as an unprivileged user (libvirt-qemu on Debian), and these VMs would not "
            "start. Build with another --output or golden image folder, or let others "
            "enter those folders (chmod o+x)."
        )
    golden = Path(manifest["base"]["path"])
    with contextlib.suppress(OSError):
        mode = golden.stat().st_mode
        if not mode & stat.S_IROTH:
            log.warn(
                f"the golden image {golden} (mode {stat.S_IMODE(mode):04o}) is not readable by "
                "other users: libvirt leaves its owner alone (the domain XML says "
                'relabel="no"), so its QEMU user could not read it and the VMs would not '
                "start (chmod o+r)"
            )


@app.command()
@reporting
@log_options()
@profile_options()
def validate(
    profile: Profile,
    no_base: Annotated[
        bool,
        typer.Option("--no-base", help="Skip the checks that read the golden image."),
    ] = False,
) -> None:
    """Check a profile and its golden image without building anything.

    Reports every problem at once, each with its place (`vm "slave3": ip ...`), and
    exits 2 if there is any. The lab's plugins are loaded and their checks run too.
    """
    from vmbuild.build.base import inspect_base
    from vmbuild.plugins.manager import load_plugins

    plan = make_plan(profile, load_plugins(profile))
    _warn_placement(plan)
    if not no_base:
        inspect_base(plan, profile.path)
    log.info(f"{profile.path}: OK, lab {plan.lab!r} with {len(plan.vms)} VMs")


@app.command("plan")
@reporting
@log_options()
@profile_options()
def plan_command(
    profile: Profile,
    as_json: JsonOpt = False,
    inspect: Annotated[
        bool,
        typer.Option(
            "--inspect",
            help="Also inspect the golden image (read-only, one appliance) and list each "
            "VM's disk operations.",
        ),
    ] = False,
) -> None:
    """Show what a build would make: each VM's identity, devices and files.

    Pure: reads only the profile, so the same profile gives the same plan (byte for
    byte with --json) on any machine. With --inspect it also reads the golden image
    and lists the edits each VM's disk gets.
    """
    from vmbuild.plugins.manager import load_plugins

    plugins = load_plugins(profile)
    plan = make_plan(profile, plugins)
    _warn_placement(plan)
    if inspect:
        from vmbuild.build.base import inspect_base
        from vmbuild.build.customize import inspect_only, plan_operations

        golden_base = inspect_base(plan, profile.path)
        if not golden_base.built:
            raise UserError(
                "the golden image is not built yet, so it cannot be inspected",
                hint="`vmbuild build` or `vmbuild golden` builds it",
            )
        facts = inspect_only(golden_base)
        plan = plan_operations(plan, facts, plugins).plan
    if as_json:
        sys.stdout.write(plan.to_json())
    else:
        _print_plan(plan)


@app.command("plugins")
@reporting
@log_options()
@profile_options(base=False)
def plugins_command(
    profile: Profile,
    as_json: JsonOpt = False,
) -> None:
    """List the plugins a build of this lab loads, in the order they are registered.

    pluggy calls them the other way round, the last registered (the lab's own)
    first, and combines their results so that the last registered wins; see
    docs/plugins.md, "Call order and precedence".

    For each: its name, where it comes from (builtin, entry point and its
    distribution, file, module) and the hooks it implements. Plugins named in
    VMBUILD_DISABLE_PLUGINS (comma-separated) are listed as disabled.
    """
    from vmbuild.plugins.manager import load_plugins

    plugins = load_plugins(profile, check=False)
    if as_json:
        print(json.dumps([info.to_data() for info in plugins.infos], indent=2))
        return
    for info in plugins.infos:
        origin = info.origin if info.origin != info.name else ""
        print(f"{info.name}  ({info.source}{', ' + origin if origin else ''})")
        if info.disabled:
            print("    disabled by VMBUILD_DISABLE_PLUGINS")
        for hook in info.hooks:
            print(f"    {hook}")


@app.command("import")
@reporting
@log_options(quiet=True)
def import_lab(
    domains: Annotated[
        list[str],
        typer.Argument(
            metavar="DOMAIN.xml...",
            help="Each VM's domain XML, as `virsh dumpxml NAME` writes it (- reads one "
            "from standard input).",
            show_default=False,
        ),
    ],
    output: Annotated[
        str,
        typer.Option(
            "--output",
            "-o",
            metavar="FILE",
            help="The profile to write (- for standard output). An existing FILE is "
            "refused unless --force.",
            show_default=False,
        ),
    ],
    inspect: Annotated[
        bool,
        typer.Option(
            "--inspect",
            help="Also open every disk read-only (one libguestfs appliance, nothing mounted "
            "on this host) and read each guest's hostname, static IP, prefix, gateway and "
            "DNS from its own network files.",
        ),
    ] = False,
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            metavar="LAB",
            help="The lab's name (default: the lab vmbuild built the VMs for, else FILE's name).",
            show_default=False,
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace FILE if it exists.")] = False,
) -> None:
    """Turn a lab cloned by hand into a profile, from each VM's domain XML.

    Reads each VM's name, MAC, VNC port, listen address and keymap, vCPUs, memory,
    disk (its size from qemu-img info when the file is here), disk bus, bridge or
    libvirt network, machine and domain type. What all VMs share goes into
    [defaults]; VMs in a sequence become one group where that keeps every MAC and VNC
    port. [base] image is the first VM's disk (or its backing file): point it at your
    template. Addresses the XML cannot give (all of them, without --inspect) are
    left as TODO, which `vmbuild validate` names VM by VM. Problems in the XML are
    listed file by file; any error exits 2 and writes nothing. See docs/import.md.
    """
    from vmbuild.importer.domxml import ImportProblems
    from vmbuild.importer.lab import check_output, save
    from vmbuild.importer.lab import import_lab as run_import

    check_output(output, force)
    try:
        result = run_import(domains, inspect=inspect, name=name, output=output)
    except ImportProblems as err:
        for warning in err.warnings:
            log.warn(str(warning))
        raise
    for warning in result.warnings:
        log.warn(str(warning))
    save(output, result.text)
    todos = result.text.count(' = "TODO"')
    log.info(
        f"{'Wrote ' + output if output != '-' else 'Imported'}: lab {result.name!r}, "
        f"{result.vms} VM{'s' if result.vms > 1 else ''}"
        + (f", {todos} TODO{'s' if todos > 1 else ''} to fill in" if todos else "")
        + (f"; then: vmbuild validate {output}" if output != "-" else "")
    )
    if output != "-":
        print(output)


@app.command()
@reporting
def golden(
    debian: Annotated[
        str, typer.Option("--debian", metavar="RELEASE", help="The Debian release.")
    ] = "bookworm",
    size: Annotated[
        str, typer.Option("--size", metavar="SIZE", help="Virtual size, e.g. 4G.")
    ] = "4G",
    packages: Annotated[
        list[str] | None,
        typer.Option("--package", "-p", metavar="NAME", help="An extra package (repeatable)."),
    ] = None,
    mirror: Annotated[
        str | None,
        typer.Option("--mirror", metavar="URL", help="Debian mirror (default: this host's)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Build a bootable golden image from Debian's packages (debootstrap + libguestfs).

    The image has a kernel, systemd, cloud-init, openssh-server, qemu-guest-agent,
    GRUB and a serial console. It is cached by a digest of its recipe: asking again
    for the same recipe returns the cached image at once. Needs root (debootstrap).
    Prints the image's path; a profile uses it with `debian = "bookworm"` under [base].
    """
    from vmbuild.golden.builder import build_golden
    from vmbuild.golden.recipe import GoldenRecipe
    from vmbuild.model.profile import parse_size

    try:
        size_bytes = parse_size(size)
    except ValueError as err:
        raise UserError(f"--size {size!r} {err}") from None
    recipe = GoldenRecipe(
        release=debian, size=size_bytes, packages=tuple(packages or ()), mirror=mirror
    )
    path, digest = build_golden(recipe, progress=log.info)
    if as_json:
        print(json.dumps({"path": str(path), "sha256": digest, "recipe": recipe.to_json()}))
    else:
        log.info(f"sha256 {digest}")
        print(path)


@app.command()
@reporting
def doctor(
    quick: Annotated[
        bool, typer.Option("--quick", help="Do not start a libguestfs appliance to test it.")
    ] = False,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose",
            "-v",
            help="Also show the rest of a check's message (e.g. QEMU's), under its row.",
        ),
    ] = False,
) -> None:
    """Report what this host has for vmbuild: qemu-img, ssh-keygen, libguestfs and its
    appliance, whether KVM really works (else TCG), libvirtd, virt-xml-validate.

    One row per check, with the first line of what it found; -v shows the other
    lines too (a tool's full error message), indented under the row.

    Exits 3 when something a build needs is missing.
    """
    from vmbuild.commands.doctor import run_checks, table

    checks = run_checks(launch=not quick)
    print(table(checks, verbose))
    if any(check.required and not check.ok for check in checks):
        raise typer.Exit(3)


@app.command()
@reporting
def check(
    bundle: BundleArg,
    connect: ConnectOpt = None,
    wait: Annotated[
        float,
        typer.Option(
            "--wait",
            metavar="SECONDS",
            min=0,
            help=(
                "Give VMs that long to start their guest agent and finish cloud-init "
                "(for VMs just started; a boot under TCG takes a minute or two)."
            ),
        ),
    ] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Check that a bundle's running VMs are the machines it describes.

    Each VM's QEMU guest agent is asked, from inside the guest, for its hostname,
    the IPv4 address of the NIC with the VM's MAC, /etc/machine-id, the SSH host keys
    in /etc/ssh and `cloud-init status`. They are compared with the bundle's
    manifest.json and inventory/known_hosts, and machine-ids and host keys must
    differ between VMs. Prints a table, one row per VM; exits 5 when any VM differs
    (or is not running, or its agent does not answer).
    """
    from vmbuild.commands.check import check_bundle, table
    from vmbuild.deploy.survey import parse_pairs
    from vmbuild.libvirt.virsh import Virsh

    overrides = parse_pairs(connect or [], "uri", "--connect")
    local = Virsh(overrides.get("local"))
    on_hosts: dict[str, Virsh] = {}
    with contextlib.suppress(OSError, ValueError):  # an older bundle: every VM local
        plan = Plan.from_json((bundle / "plan.json").read_text())
        for vm in plan.vms:
            uri = overrides.get(vm.host) or plan.host(vm.host).uri
            on_hosts[vm.name] = Virsh(uri) if uri else local
    log.info(f"‣ Checking the VMs of {bundle}" + (f" (waiting up to {wait:.0f}s)" if wait else ""))
    reports = check_bundle(bundle, local, wait, progress=log.info, on_hosts=on_hosts)
    ok = all(report.ok for report in reports)
    if as_json:
        print(json.dumps({"bundle": str(bundle), "ok": ok, "vms": [r.to_json() for r in reports]}))
    else:
        print(table(reports))
    if not ok:
        raise typer.Exit(int(ExitCode.MISMATCH))


ArtifactArg = Annotated[
    str,
    typer.Argument(
        metavar="ARTIFACT",
        help="An OCI layout folder, DIR or DIR:TAG (TAG may be left out when DIR holds one lab).",
        show_default=False,
    ),
]
AllowedSignersOpt = Annotated[
    Path | None,
    typer.Option(
        "--allowed-signers",
        metavar="FILE",
        help="Who may sign labs, in ssh-keygen's allowed_signers format (default: "
        "$VMBUILD_ALLOWED_SIGNERS, else ~/.config/vmbuild/allowed_signers).",
        show_default=False,
    ),
]
AllowUnsignedOpt = Annotated[
    bool,
    typer.Option("--allow-unsigned", help="Accept a lab that carries no signature."),
]


def trust_options() -> Callable[[F], F]:
    """The shared --allowed-signers and --allow-unsigned: the command receives them
    as one `Trust`, its ``trust`` parameter."""

    def trust(values: dict[str, Any]) -> dict[str, Any]:
        return {"trust": Trust(values["allowed_signers"], values["allow_unsigned"])}

    options: dict[str, tuple[Any, Any]] = {
        "allowed_signers": (AllowedSignersOpt, None),
        "allow_unsigned": (AllowUnsignedOpt, False),
    }
    return _adding_options(options, trust, replaces=("trust",))


@app.command()
@reporting
@log_options(quiet=True)
def pack(
    bundle: BundleArg,
    out: Annotated[
        Path,
        typer.Option(
            "--output", "-o", metavar="DIR", help="The OCI layout to write (created, or added to)."
        ),
    ],
    tag: Annotated[
        str | None,
        typer.Option(
            "--tag", "-t", metavar="TAG", help="The tag in DIR (default: the lab's name)."
        ),
    ] = None,
    sign_key: Annotated[
        Path | None,
        typer.Option(
            "--sign",
            metavar="KEY",
            help="Sign the lab with this SSH key (ssh-keygen -Y sign; a public key "
            "whose private half ssh-agent holds will do).",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Pack a built bundle into an OCI image layout, optionally signed.

    The golden image is stored once, in zstd pieces of at most 256 MiB, and shared
    by every lab packed into the same DIR; each VM's disk, seed and domain XML and
    the lab's files are blobs of the lab's manifest. DIR can be copied as it is,
    read by OCI tools (skopeo inspect --raw oci:DIR:TAG) and pushed with
    `vmbuild push`. The same bundle always packs to the same bytes. See
    docs/artifact.md.
    """
    from vmbuild.artifact.pack import pack as run_pack

    with log.transfer("packing") as progress:
        result = run_pack(bundle, out, tag=tag, sign_key=sign_key, progress=progress)
    if as_json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(f"{result.layout}:{result.tag}")


@app.command()
@reporting
@log_options(quiet=True)
@trust_options()
def verify(artifact: ArtifactArg, trust: Trust, as_json: JsonOpt = False) -> None:
    """Check a packed lab: its signature, every blob and every disk, reassembled.

    The lab manifest's signature must be by a key that the allowed signers file
    allows (namespace vmbuild-lab); every blob's digest and size, every piece's
    sha256 once decompressed, every VM's disk and the golden image's sha256 must
    be those the signed manifests record. Exits 2 naming the blob and what it
    belongs to when anything differs.
    """
    from vmbuild.artifact.verify import verify as run_verify

    result = run_verify(artifact, trust)
    if as_json:
        print(json.dumps(result.to_json(), indent=2))


@app.command()
@reporting
@log_options(quiet=True)
@trust_options()
def unpack(
    artifact: ArtifactArg,
    trust: Trust,
    output: OutputOpt = Path("output"),
    as_json: JsonOpt = False,
) -> None:
    """Verify a packed lab, then lay it out as a bundle at OUTPUT/<lab>.

    The golden image goes into vmbuild's golden cache (once, however many labs use
    it); the overlays, domain XML, define.sh and inventory are pointed at the new
    paths, and the bundle is published in one step, like a build's: `sh
    OUTPUT/<lab>/define.sh`, `vmbuild check` and the next `vmbuild build` of the
    lab's profile treat it as their own. Prints the bundle's path.
    """
    result = _unpack(artifact, output, trust)
    if as_json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(result.bundle)


def _unpack(artifact: str, output: Path, trust: Trust) -> UnpackResult:
    from vmbuild.artifact.unpack import unpack as run_unpack

    with log.transfer("unpacking") as progress:
        return run_unpack(
            artifact,
            output,
            trust=trust,
            progress=progress,
        )


RefArg = Annotated[
    str,
    typer.Argument(
        metavar="REF",
        help="Where in a registry: HOST[:PORT]/REPOSITORY:TAG, e.g. "
        "registry.example:5000/labs/reference-lab:2026-12.",
        show_default=False,
    ),
]
InsecureOpt = Annotated[
    bool,
    typer.Option(
        "--insecure",
        help="Speak plain HTTP to a registry that is not on this host's loopback.",
    ),
]


@app.command()
@reporting
@log_options(quiet=True)
def push(
    artifact: ArtifactArg,
    ref: RefArg,
    insecure: InsecureOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Push a packed lab (and its signatures) to an OCI registry.

    Blobs the registry already has are not sent again (those in another of its
    repositories are mounted from there): a second lab on the same golden image
    sends only its own disks, seeds and files, and an interrupted push sends only
    what did not arrive. Credentials
    come from VMBUILD_REGISTRY_USERNAME/VMBUILD_REGISTRY_PASSWORD, else the usual
    auth files ($REGISTRY_AUTH_FILE, containers' auth.json, Docker's config.json).
    """
    from vmbuild.artifact.layout import Layout, split_reference
    from vmbuild.artifact.registry import push as run_push

    folder, tag = split_reference(artifact)
    tag, _ = Layout(folder).resolve(tag)
    with log.step(f"Pushing {folder}:{tag} to {ref}"), log.transfer("pushing") as progress:
        result = run_push(folder, tag, ref, insecure=insecure, progress=progress)
    log.info(
        f"‣ {ref}: {result.digest}; sent {result.sent_blobs} blobs "
        f"({format_size(result.sent_bytes)}), {result.skipped_blobs} were there already "
        f"({format_size(result.skipped_bytes)}), {result.mounted_blobs} mounted from "
        f"other repositories ({format_size(result.mounted_bytes)})"
    )
    if as_json:
        print(json.dumps({"ref": ref, **dataclasses.asdict(result)}, indent=2))


@app.command()
@reporting
@log_options(quiet=True)
@trust_options()
def pull(
    ref: RefArg,
    trust: Trust,
    output: OutputOpt = Path("output"),
    insecure: InsecureOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Pull a lab from an OCI registry, verify it and unpack it at OUTPUT/<lab>.

    The artifact is kept in vmbuild's cache (artifacts/, one OCI layout shared by
    every pull, so a golden image comes down once), tagged by REF; what is there
    already is not fetched again, and an interrupted pull resumes. Then it is
    verified and unpacked as `vmbuild unpack` does. Prints the bundle's path.
    """
    from vmbuild.artifact.registry import pull as run_pull
    from vmbuild.golden.recipe import default_cache

    layout = default_cache() / "artifacts"
    with log.step(f"Pulling {ref} into {layout}"), log.transfer("pulling") as progress:
        pulled = run_pull(ref, layout, tag=ref, insecure=insecure, progress=progress)
    log.info(
        f"‣ {ref}: {pulled.digest}; fetched {pulled.fetched_blobs} blobs "
        f"({log.size_text(pulled.fetched_bytes)}), {pulled.reused_blobs} were here already"
    )
    result = _unpack(f"{layout}:{ref}", output, trust)
    if as_json:
        print(
            json.dumps(
                {"ref": ref, "pulled": dataclasses.asdict(pulled), **result.to_json()}, indent=2
            )
        )
    else:
        print(result.bundle)


# ------------------------------------------------------------------ lab on hosts

SourceArg = Annotated[
    str,
    typer.Argument(
        metavar="SOURCE",
        help="The lab: a bundle folder (OUTPUT/<lab>), a profile (its bundle in ./output; "
        "deploy and up build it first), an artifact (DIR[:TAG]) or a registry reference "
        "(HOST/REPOSITORY:TAG).",
        show_default=False,
    ),
]
VmsArg = Annotated[
    list[str] | None,
    typer.Argument(
        metavar="VM", help="Only these VMs (default: every VM of the lab).", show_default=False
    ),
]


@dataclasses.dataclass(frozen=True)
class LabRequest:
    """What a lab command was asked to act on."""

    source: str
    vms: tuple[str, ...]
    connect: dict[str, str]
    trust: Trust
    insecure: bool

    def load(self, *, build: bool) -> Any:
        """The Source; a profile is built first when ``build``, else its bundle read."""
        from vmbuild.deploy.source import open_source, read_bundle

        path = Path(self.source)
        if path.suffix == ".toml" and path.is_file():
            profile = load_profile(path)
            if not build:
                return read_bundle(Path("output") / profile.name, name=self.source)
            from vmbuild.build.pipeline import build as run_build
            from vmbuild.plugins.manager import load_plugins

            plugins = load_plugins(profile)
            result = run_build(make_plan(profile, plugins), plugins, Path("output"), source=path)
            return read_bundle(result.bundle, name=self.source)
        with log.transfer("unpacking") as progress:
            return open_source(self.source, self.trust, insecure=self.insecure, progress=progress)

    @contextlib.contextmanager
    def open(self, *, build: bool = False) -> Any:
        """(source, hosts, vms): the lab, a connection to each of its hosts, the VMs."""
        from vmbuild.deploy.survey import close, open_hosts

        source = self.load(build=build)
        vms = source.vms(self.vms)
        hosts = open_hosts(source.plan, self.connect)
        try:
            yield source, hosts, vms
        finally:
            close(hosts)


def lab_options(*, vms: bool = True) -> Callable[[F], F]:
    """SOURCE, [VM]..., --connect, --insecure and the trust options: the command
    receives them as one `LabRequest`, its ``lab`` parameter."""

    def request(values: dict[str, Any]) -> dict[str, Any]:
        from vmbuild.deploy.survey import parse_pairs

        return {
            "lab": LabRequest(
                values["source"],
                tuple(values.get("vm_names") or ()),
                parse_pairs(values["connect"] or [], "uri", "--connect"),
                Trust(values["allowed_signers"], values["allow_unsigned"]),
                values["insecure"],
            )
        }

    options: dict[str, tuple[Any, Any]] = {"source": (SourceArg, ...)}
    if vms:
        options["vm_names"] = (VmsArg, None)
    options |= {
        "connect": (ConnectOpt, None),
        "allowed_signers": (AllowedSignersOpt, None),
        "allow_unsigned": (AllowUnsignedOpt, False),
        "insecure": (InsecureOpt, False),
    }
    return _adding_options(options, request, replaces=("lab",))


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> None:
    """Columns aligned, on stdout."""
    lines = [header, *rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())


def _print_results(results: list[Any], as_json: bool, extra: dict[str, Any] | None = None) -> None:
    """Per-VM results as a table (or JSON); exit 3 when any VM failed."""
    ok = all(r.ok for r in results)
    if as_json:
        print(
            json.dumps({"ok": ok, "vms": [r.to_json() for r in results], **(extra or {})}, indent=2)
        )
    else:
        _table(
            ("VM", "HOST", "RESULT"),
            [(r.vm, r.host, r.message if r.ok else f"FAILED: {r.message}") for r in results],
        )
    if not ok:
        raise typer.Exit(int(ExitCode.BUILD))


def _deploy(lab: LabRequest, pools: list[str], replace: bool) -> tuple[Any, list[Any]]:
    from vmbuild.deploy.deploy import deploy as run_deploy
    from vmbuild.deploy.survey import parse_pairs

    overrides = parse_pairs(pools, "pool", "--pool")
    with lab.open(build=True) as (source, hosts, _vms):
        pool_names = {name: overrides.get(name) or source.plan.host(name).pool for name in hosts}
        with log.transfer("sending") as progress:
            reports = run_deploy(source, hosts, pool_names, replace=replace, progress=progress)
    for report in reports:
        done = {
            a: sum(v == a for v in report.actions.values()) for a in set(report.actions.values())
        }
        summary = ", ".join(f"{count} {action}" for action, count in sorted(done.items()))
        log.info(
            f"‣ {report.host} ({report.uri}): {summary}; sent {log.size_text(report.sent.bytes)} "
            f"in {len(report.sent.volumes)} volume(s)"
            + (f", removed {len(report.retired)} unused" if report.retired else "")
        )
    return source, reports


PoolOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--pool",
        metavar="[HOST=]POOL",
        help="Storage pool for the lab's volumes on the local host (or on HOST), instead "
        "of the profile's (default: default). Repeatable.",
        show_default=False,
    ),
]
ReplaceOpt = Annotated[
    bool,
    typer.Option(
        "--replace",
        help="Undefine a shut-off domain that has a VM's name or UUID but was not deployed "
        "by this lab, and deploy the VM in its place. A running domain is never touched.",
    ),
]


@app.command()
@reporting
@log_options(quiet=True)
@lab_options(vms=False)
def deploy(
    lab: LabRequest,
    pool: PoolOpt = None,
    start: Annotated[bool, typer.Option("--start", help="Start the VMs once deployed.")] = False,
    replace: ReplaceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Define a lab's VMs on their libvirt hosts, through libvirt's API.

    Each host gets the golden image once, as a volume named by its digest, sent as a
    sparse stream only when it lacks it; each VM's overlay (re-pointed to that
    volume) and seed become volumes beside it, and its domain is defined with
    metadata naming the lab. Deploying again sends and redefines nothing; a changed
    VM is redefined alone. A domain this lab did not deploy, or a running one that
    would change, is never touched. A host that fails is left as it was (or with
    the lab's previous state); a rerun finishes the job.
    """
    from vmbuild.deploy import lifecycle

    source, reports = _deploy(lab, pool or [], replace)
    results = []
    if start:
        with lab.open() as (_source, hosts, vms):
            results = lifecycle.each(source, hosts, vms, lifecycle.start)
    if as_json:
        print(json.dumps({"source": source.digest, "hosts": [r.to_json() for r in reports],
                          "started": [r.to_json() for r in results]}, indent=2))  # fmt: skip
    else:
        rows = [(vm, r.host, action) for r in reports for vm, action in r.actions.items()]
        _table(("VM", "HOST", "DEPLOYED"), rows)
    if any(not r.ok for r in results):
        raise typer.Exit(int(ExitCode.BUILD))


@app.command()
@reporting
@log_options(quiet=True)
@lab_options()
def up(lab: LabRequest, pool: PoolOpt = None, as_json: JsonOpt = False) -> None:
    """Deploy the lab where it is not deployed as it is, then start its VMs (or
    those named) in profile order."""
    from vmbuild.deploy import lifecycle

    source, _reports = _deploy(dataclasses.replace(lab, vms=()), pool or [], False)
    with lab.open() as (_source, hosts, vms):
        _print_results(lifecycle.each(source, hosts, vms, lifecycle.start), as_json)


@app.command()
@reporting
@log_options(quiet=True)
@lab_options()
def down(
    lab: LabRequest,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout", metavar="SECONDS", min=0, help="How long to wait for the VMs to shut down."
        ),
    ] = 120,
    force: Annotated[
        bool, typer.Option("--force", help="Power off what is still running after --timeout.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Shut the lab's VMs (or those named) down, in reverse profile order: through
    the guest agent, else ACPI; wait up to --timeout, then --force powers off."""
    from vmbuild.deploy import lifecycle

    with lab.open() as (source, hosts, vms):
        results = lifecycle.down(source, hosts, vms, timeout=timeout, force=force)
    _print_results(results, as_json)


def _lab_verb(name: str, summary: str) -> None:
    """A lab command that runs one of `lifecycle.VERBS` on each VM."""

    @app.command(name, help=summary)
    @reporting
    @log_options(quiet=True)
    @lab_options()
    def command(lab: LabRequest, as_json: JsonOpt = False) -> None:
        from vmbuild.deploy import lifecycle

        with lab.open() as (source, hosts, vms):
            results = lifecycle.VERBS[name](source, hosts, vms)
        _print_results(results, as_json)


_lab_verb("suspend", "Pause the lab's running VMs (or those named).")
_lab_verb("resume", "Resume the lab's paused VMs (or those named).")
_lab_verb(
    "reset",
    "Put each VM's disk (or the named VMs') back to the state it was built in: its "
    "volume is written anew from SOURCE. A running VM is powered off first and started "
    "again afterwards; what it wrote to its disk is gone.",
)


@app.command()
@reporting
@log_options(quiet=True)
@lab_options()
def destroy(lab: LabRequest, as_json: JsonOpt = False) -> None:
    """Stop and undefine the lab's domains (or the named VMs') and delete the volumes
    its deploy made; for the whole lab also its network (when the deploy made it and
    no other domain uses it) and the golden volume (when no domain uses it any more).
    Nothing that this lab did not deploy is touched. Says what was removed."""
    from vmbuild.deploy import lifecycle

    with lab.open() as (source, hosts, vms):
        results, removed = lifecycle.destroy(source, hosts, vms, whole_lab=not lab.vms)
    for host in removed:
        if host.error:
            log.warn(f"{host.host}: {host.error}")
    try:
        _print_results(results, as_json, {"removed": {h.host: h.items for h in removed}})
    finally:
        if not as_json:
            for host in removed:
                print(f"{host.host}: removed {', '.join(host.items) if host.items else 'nothing'}")
    if any(h.error for h in removed):
        raise typer.Exit(int(ExitCode.BUILD))


@app.command()
@reporting
@log_options(quiet=True)
@lab_options()
def status(lab: LabRequest, as_json: JsonOpt = False) -> None:
    """A table of the lab's VMs: host, state, autostart, IP and VNC, each asked of the
    VM's own host."""
    from vmbuild.deploy import lifecycle

    with lab.open() as (source, hosts, vms):
        rows = lifecycle.status(source, hosts, vms)
    if as_json:
        print(json.dumps({"lab": source.plan.lab, "vms": [r.to_json() for r in rows]}, indent=2))
    else:
        print(lifecycle.table(rows))


TargetOpt = Annotated[
    str,
    typer.Option(
        "--target",
        "-t",
        metavar="TARGET",
        help="xen-hvm, xen-pv, xen-pvh, hyperv or vmware (docs/targets.md says what each writes).",
        show_default=False,
    ),
]


@app.command()
@reporting
@log_options(quiet=True)
@trust_options()
def export(
    source: SourceArg,
    trust: Trust,
    target: TargetOpt,
    out: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            metavar="DIR",
            help="Where the export goes (default: LAB-TARGET beside the bundle, or in the "
            "current folder for an artifact). An earlier export there is replaced; "
            "anything else there is refused.",
            show_default=False,
        ),
    ] = None,
    root: Annotated[
        str | None,
        typer.Option(
            "--root",
            metavar="PATH",
            help="Xen: the absolute folder the bundle will be in on the Xen host, which "
            "the exported configs name as their disks' folder (default: the bundle's own "
            "path).",
            show_default=False,
        ),
    ] = None,
    insecure: InsecureOpt = False,
) -> None:
    """Convert a built lab for another hypervisor: Xen, Hyper-V or VMware.

    SOURCE is a bundle folder, a profile (built first), an artifact or a registry
    reference. Every VM keeps its name, MAC, addresses, console, CPUs, memory and
    disk size; disks are flattened (VHDX, VMDK) where the target cannot read the
    golden image's overlays. The export gets its own SHA256SUMS, and is put in place
    whole: a failure leaves the previous export as it was.
    """
    from vmbuild.deploy.source import check_built
    from vmbuild.model.profile import Target
    from vmbuild.targets.export import check_exportable, export_bundle, exportable

    try:
        chosen = Target(target)
    except ValueError:
        raise UserError(
            f"--target {target!r} is not a target", hint=f"one of {', '.join(exportable())}"
        ) from None
    check_exportable(chosen, place="--target")
    if root is not None and not root.startswith("/"):
        raise UserError(f"--root {root!r} is not an absolute path")
    lab = LabRequest(source, (), {}, trust, insecure)
    bundle = lab.load(build=True)
    check_built(bundle, bundle.plan.vms)
    if out is None:
        given = Path(source)
        local = given.suffix == ".toml" or (given / "manifest.json").is_file()
        out = (bundle.bundle.parent if local else Path.cwd()) / f"{bundle.plan.lab}-{chosen}"
    dest = out
    print(export_bundle(bundle.plan, bundle.bundle, chosen, dest, root=root))


def _print_plan(plan: Plan) -> None:
    net = plan.network
    where = f"{net.type.value} {net.source}" if net.source else net.type.value
    base = plan.base.describe()
    print(f"lab {plan.lab} ({plan.domain_type.value}), base {base}, {where} {net.subnet}")
    placed = len(plan.placement()) > 1 or any(vm.host != "local" for vm in plan.vms)
    header: tuple[str, ...] = ("NAME", "HOSTNAME", "IP", "MAC", "VNC", "CPU", "MEMORY", "DISK")
    rows: list[tuple[str, ...]] = [header + (("HOST",) if placed else ())]
    for vm in plan.vms:
        rows.append(
            (
                vm.name,
                vm.fqdn,
                f"{vm.ip}/{vm.prefix}",
                vm.mac,
                str(vm.vnc.port),
                str(vm.vcpus),
                format_size(vm.memory),
                f"{vm.disk.mode.value} {format_size(vm.disk.size) if vm.disk.size else 'as base'}",
                *((vm.host,) if placed else ()),
            )
        )
    _table(rows[0], rows[1:])
    if plan.guest is not None:
        print(f"\ngolden image: {plan.guest.family}")
        for vm in plan.vms:
            print(f"{vm.name}:")
            for operation in vm.operations:
                print(f"  {operation['summary']}")


# ----------------------------------------------------------------------- entry


def _with_default_command(args: list[str]) -> list[str]:
    """`vmbuild profile.toml ...` means `vmbuild build profile.toml ...`."""
    commands = {
        info.name or (info.callback.__name__ if info.callback else "")
        for info in app.registered_commands
    }
    if args and args[0] not in commands and not args[0].startswith("-"):
        return ["build", *args]
    return args


def main(argv: list[str] | None = None) -> int:
    args = _with_default_command(list(sys.argv[1:] if argv is None else argv))
    interrupts.install()
    try:
        app(args=args, prog_name="vmbuild")
    except SystemExit as exit_:
        code = exit_.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0


def run() -> NoReturn:
    sys.exit(main())


if __name__ == "__main__":
    run()
