"""`selfheal nas config show|init`."""

from __future__ import annotations

import os
from pathlib import Path

import click

from selfheal.backup.transports.mount import mark_nas
from selfheal.cli.context import EXIT_CONFIG, CliState
from selfheal.cli.output import emit_json, fail, table
from selfheal.config import init_config
from selfheal.config.sources import file_key_of
from selfheal.errors import ConfigError

pass_state = click.make_pass_decorator(CliState)


@click.group()
def nas() -> None:
    """NAS backup configuration and targets."""


@nas.group("config")
def config_group() -> None:
    """Show or initialise the shared config file."""


@config_group.command("show")
@click.option("--effective", is_flag=True, help="Every key, defaults included.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_state
def show(state: CliState, effective: bool, as_json: bool) -> None:
    """Each key as it is written (file key or env var), its value, and where it came
    from; a value that a stronger source shadows is listed too, marked. Secrets redacted.

    \b
    Example: selfheal nas config show --effective
    """
    loaded = state.load()
    items = [i for i in loaded.effective_items() if effective or i.source != "default"]
    if as_json:
        emit_json(
            {
                "path": str(loaded.path),
                "exists": loaded.exists,
                "items": [
                    {
                        "key": i.key,
                        "writtenAs": i.written_as,
                        "value": i.value,
                        "source": i.source,
                        "default": i.default,
                        "env": list(i.env_vars),
                        "secret": i.secret,
                        "overridden": [{"source": src, "value": v} for src, v in i.overridden],
                    }
                    for i in items
                ],
            }
        )
        return
    click.echo(f"# {loaded.path}{'' if loaded.exists else ' (missing: defaults)'}")
    if not items:
        click.echo("every key is at its default; use --effective to list them")
        return
    rows: list[list[object]] = []
    notes: list[str] = []
    for item in items:
        rows.append([item.written_as, item.origin, item.value])
        if item.origin == "env":
            notes.append(f"{item.written_as} sets {file_key_of(item.key)}")
        for source, value in item.overridden:
            where = source.partition(":")[2]
            rows.append([where, "IGNORED", value])
            notes.append(f"{where} is ignored: {item.written_as} overrides it")
    click.echo(table(["key", "from", "value"], rows))
    if notes:
        click.echo("\n" + "\n".join(notes))


@config_group.command("init")
@click.option("--force", is_flag=True, help="Rewrite our sections of an existing file.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_state
def init(state: CliState, force: bool, as_json: bool) -> None:
    """Write a complete config template (other programs' sections are kept).

    \b
    Example: selfheal --config ~/.joelclaw/system-bus.config.json nas config init
    """
    path = state.resolved_config_path()
    existed = os.path.exists(path)
    try:
        init_config(path, force=force)
    except FileExistsError:
        fail(
            f"{path} exists; use --force to rewrite selfheal's sections (others are kept)",
            EXIT_CONFIG,
        )
    except ConfigError as exc:
        fail(str(exc), EXIT_CONFIG)
    except OSError as exc:  # no such folder, not ours to write, a name too long...
        fail(f"cannot write {path}: {exc.strerror or exc}", EXIT_CONFIG)
    if as_json:
        emit_json({"path": str(path), "written": True, "replacedOurSections": existed})
    else:
        click.echo(f"wrote {path}")


@nas.command("mark")
@click.argument("path", type=click.Path(file_okay=False, path_type=Path))
@click.option("--id", "nas_id", default="nas", show_default=True, help="Name of this NAS.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def mark(path: Path, nas_id: str, as_json: bool) -> None:
    """Mark PATH (the NAS mount, or a folder standing in for it) as the backup NAS.

    The mount transport writes only where this marker is, so a missing mount can
    never send backups to the local disk underneath it.

    \b
    Example: selfheal nas mark /Volumes/three-body --id three-body
    """
    try:
        if not path.is_dir():  # raises for a path that cannot be looked at (a name too long)
            fail(f"{path} is not a folder (mount the NAS first)", EXIT_CONFIG)
        marker = mark_nas(path, nas_id)
    except (OSError, ValueError) as exc:
        fail(f"cannot mark {path}: {exc}", EXIT_CONFIG)
    result = {
        "path": str(path),
        "nasId": nas_id,
        "marker": str(marker),
        "mountPoint": os.path.ismount(path),
    }
    if as_json:
        emit_json(result)
        return
    click.echo(f"marked {path} as NAS {nas_id!r} ({marker})")
    if not result["mountPoint"]:
        click.echo(
            "note: not a mount point; backups go here only for a target with "
            "requireMountPoint set to false",
        )
