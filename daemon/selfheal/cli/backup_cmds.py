"""`selfheal backup run|list|verify|retention`."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import PurePath
from typing import Any

import click

from selfheal.cli.context import EXIT_DAEMON_ERROR, CliState
from selfheal.cli.output import ago, emit_json, fail, human_size, table

pass_state = click.make_pass_decorator(CliState)
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
TARGET = click.Choice(["typesense", "redis"])


@click.group()
def backup() -> None:
    """Run and inspect backups."""


class FollowView:
    """How `backup run --follow` shows a run: stage lines and the transfer's progress."""

    def stage(self, name: str) -> None:
        click.echo(f"{name}...")

    def shipped(self, done: int, total: int, rate_bps: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """The run is over (the final line follows)."""


class PlainLines(FollowView):
    """Not a terminal: a line at each tenth of the transfer, never a redrawn line."""

    def __init__(self) -> None:
        self.shown = -1

    def shipped(self, done: int, total: int, rate_bps: int) -> None:
        tenth = 10 if total <= 0 else min(10, done * 10 // total)
        if tenth > self.shown:
            self.shown = tenth
            share = 1.0 if total <= 0 else done / total
            click.echo(
                f"ship {share:.0%} {done / 1e6:.1f}/{total / 1e6:.1f} MB {rate_bps / 1e6:.1f} MB/s"
            )


class LiveBar(FollowView):
    """A terminal: one progress bar, redrawn in place (rich)."""

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TaskID,
            TaskProgressColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.progress = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            TaskProgressColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
        )
        self.task: TaskID | None = None

    def stage(self, name: str) -> None:
        if name != "ship":
            self.progress.console.print(f"{name}...")
            return
        self.progress.start()
        self.task = self.progress.add_task("ship", total=None)

    def shipped(self, done: int, total: int, rate_bps: int) -> None:
        if self.task is None:
            self.stage("ship")
        assert self.task is not None
        self.progress.update(self.task, completed=done, total=total)

    def close(self) -> None:
        self.progress.stop()


def follow_run(state: CliState, target: str, as_json: bool) -> dict[str, Any]:
    """Show the run's progress; return its final item ({} if the stream ended without)."""
    view: FollowView | None = None
    if not as_json:
        view = LiveBar() if sys.stdout.isatty() else PlainLines()
    final: dict[str, Any] = {}
    shown: str | None = None
    try:
        for item in state.stream("backup.run", {"target": target, "follow": True}):
            if item.get("heartbeat"):
                continue  # the daemon is still waiting on the run: nothing new to show
            stage = str(item.get("stage"))
            if as_json:
                click.echo(json.dumps(item, separators=(",", ":"), sort_keys=True))
            if stage == "done":
                final = item
                if view is not None and item.get("status") == "delivered":
                    size = int(item.get("bytes") or 0)  # the whole artifact arrived: 100%
                    view.shipped(size, size, int(item.get("rateBps") or 0))
                break
            if view is not None and stage != shown and not (stage == "ship" and "done" in item):
                view.stage(stage)
            if view is not None and stage == "ship" and "done" in item:
                view.shipped(int(item["done"]), int(item["total"]), int(item["rateBps"]))
            shown = stage
    finally:
        if view is not None:
            view.close()
    return final


@backup.command("run")
@click.argument("target", type=TARGET)
@click.option(
    "--follow",
    is_flag=True,
    help="Show progress until the run ends; exit 4 unless the run delivered.",
)
@json_option
@pass_state
def run(state: CliState, target: str, follow: bool, as_json: bool) -> None:
    """Request a backup of TARGET now (the daemon runs it; one per target at a time).

    With --follow: a progress bar on a terminal, a line per tenth of the transfer
    otherwise, and with --json one compact JSON object per line.

    \b
    Example: selfheal backup run redis --follow
    """
    if not follow:
        result = state.call("backup.run", {"target": target})
        if as_json:
            emit_json(result)
        else:
            click.echo(f"backup of {target} requested (run {result['runId']})")
        return
    final = follow_run(state, target, as_json)
    if not final:
        fail(f"the {target} run ended without a result", EXIT_DAEMON_ERROR)
    if not as_json:
        click.echo(f"{target}: {final.get('status', '?')} {final.get('detail', '')}".rstrip())
    if final.get("status") != "delivered":
        # Spooled is not a success (the NAS did not get it yet), failed and skipped neither.
        fail(f"the {target} run ended {final.get('status', 'without a status')}", EXIT_DAEMON_ERROR)


@backup.command("list")
@click.argument("target", type=TARGET, required=False)
@json_option
@pass_state
def list_cmd(state: CliState, target: str | None, as_json: bool) -> None:
    """Backups on the NAS (newest last), then those still on this machine (spool,
    staging); VERIFIED means the copy on the NAS matched its manifest's sha256.

    \b
    Example: selfheal backup list redis
    """
    result = state.call("backup.list", {"target": target} if target else {})
    if as_json:
        emit_json(result)
        return
    rows = [
        [
            a["target"],
            a["name"],
            _created(a.get("created")),
            human_size(a["size"]),
            a["where"],
            _verified(a),
        ]
        for a in result["artifacts"]
    ]
    click.echo(table(["target", "artifact", "created", "size", "where", "verified"], rows))
    for item in result.get("ignored", []):
        # Ours by name, but no manifest vouches for it: not a backup to count on.
        click.echo(f"not a verified backup ({item['reason']}): {item['target']}/{item['name']}")
    for name, why in (result.get("unreachable") or {}).items():
        click.echo(f"{name}: the NAS cannot be listed right now ({why})")


def _created(stamp: str | None) -> str:
    """The artifact's creation time in local time, and how long ago."""
    if not stamp:
        return "?"
    when = datetime.fromisoformat(stamp)
    return f"{when.astimezone():%Y-%m-%d %H:%M} ({ago(when.timestamp())})"


def _verified(artifact: dict[str, Any]) -> str:
    if not artifact.get("verified"):
        return "no, not on the NAS yet"
    drill = artifact.get("drill")
    return "yes" if drill is None else f"yes, drill {drill}"


@backup.command("verify")
@click.argument("artifact")
@json_option
@pass_state
def verify(state: CliState, artifact: str, as_json: bool) -> None:
    """Recompute ARTIFACT's sha256 on the NAS and compare it with its manifest (a name,
    or its path: only the file name counts).

    \b
    Example: selfheal backup verify redis-20261127T033000Z-042-9f3c2a.rdb
    """
    artifact = PurePath(artifact).name
    result = state.call("backup.verify", {"artifact": artifact}, timeout=3600)
    if as_json:
        emit_json(result)
    else:
        verdict = "OK" if result["ok"] else "MISMATCH"
        click.echo(f"{artifact}: {verdict} (sha256 {result['actual']}, via {result['where']})")
    if not result["ok"]:
        fail(f"{artifact} does not match its manifest", EXIT_DAEMON_ERROR)


@backup.command("drill")
@click.argument("target", type=TARGET)
@click.argument("artifact", required=False)
@json_option
@pass_state
def drill(state: CliState, target: str, artifact: str | None, as_json: bool) -> None:
    """Restore ARTIFACT (default: TARGET's newest) into a throwaway server and compare
    its keys or documents with the manifest; a failure raises TARGET's incident.

    \b
    Example: selfheal backup drill redis
    """
    params = {"target": target, **({"artifact": PurePath(artifact).name} if artifact else {})}
    result = state.call("backup.drill", params, timeout=3600)
    if as_json:
        emit_json(result)
    else:
        verdict = "RESTORES" if result["ok"] else "FAILED"
        click.echo(
            f"{result['artifact']}: {verdict} in {result['seconds']:.1f}s: {result['detail']}"
        )
    if not result["ok"]:
        fail(f"the restore drill of {result['artifact']} failed", EXIT_DAEMON_ERROR)


@backup.command("retention")
@click.argument("target", type=TARGET)
@click.option("--apply", "apply_plan", is_flag=True, help="Delete now (default: dry run).")
@json_option
@pass_state
def retention(state: CliState, target: str, apply_plan: bool, as_json: bool) -> None:
    """Show (or apply) the retention plan for TARGET's folder on the NAS.

    \b
    Example: selfheal backup retention typesense --apply
    """
    result = state.call("backup.retention", {"target": target, "dryRun": not apply_plan})
    if as_json:
        emit_json(result)
        return
    rows = [[name, "keep", result["reasons"].get(name, "")] for name in result["keep"]]
    rows += [[name, "DELETE", result["reasons"].get(name, "")] for name in result["delete"]]
    rows += [[name, "ignore", why] for name, why in result.get("ignored", {}).items()]
    click.echo(table(["file", "action", "why"], rows))
    if not apply_plan:
        click.echo("(dry run; --apply deletes the files marked DELETE)")
