"""``reflex models list | register | shadow | canary | promote | rollback | status``.

Each command calls the admin API of a running server (``--server``, default
``$REFLEX_SERVER`` or http://127.0.0.1:8000) with the admin key (``--admin-key`` or
``$REFLEX_ADMIN_KEY``). Exit status: 0 done, 2 refused or bad input, with the server's
message naming the field (never a traceback).
"""

from __future__ import annotations

import getpass
import json
import re
from pathlib import Path
from typing import Annotated, Any, NoReturn
from urllib.parse import quote

import typer

models_app = typer.Typer(
    help="Model versions of a running server: register, shadow, canary, promote, roll back "
    "(docs/router.md).",
    no_args_is_help=True,
)

ServerOpt = Annotated[str, typer.Option(envvar="REFLEX_SERVER", help="Server URL.")]
KeyOpt = Annotated[str | None, typer.Option(envvar="REFLEX_ADMIN_KEY",
                                            help="Admin key of the server.")]
ActorOpt = Annotated[str | None, typer.Option(help="Who makes the change (recorded; default: "
                                                   "the user).")]
ReasonOpt = Annotated[str, typer.Option(help="Why (recorded).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the server's JSON answer.")]
DEFAULT_SERVER = "http://127.0.0.1:8000"
_VERSION_RE = re.compile(r"[0-9a-f]{12,64}|sha256:[0-9a-f]{64}")


def _fail(message: str) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _version(value: str, what: str = "VERSION") -> str:
    """A version argument, lower-cased: 12 to 64 hex digits or ``sha256:<64 hex>``; exits
    naming ``what`` otherwise (it becomes part of a URL path)."""
    v = value.strip().lower()
    if not _VERSION_RE.fullmatch(v):
        _fail(f"{what}: {value!r} is not a model version (12 or more hex digits, or a "
              "sha256: digest)")
    return v


def _actor(actor: str | None) -> str:
    if actor is not None:
        if not actor.strip():
            _fail("--actor must name who makes the change")
        return actor
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def call(server: str, admin_key: str | None, method: str, path: str,
         body: dict | None = None) -> Any:
    """One admin API call; exits with the server's message on an error."""
    import httpx

    if not admin_key:
        _fail("--admin-key (or $REFLEX_ADMIN_KEY) is required")
    url = server.rstrip("/") + path
    try:
        r = httpx.request(method, url, json=body, timeout=300,
                          headers={"Authorization": f"Bearer {admin_key}"})
    except httpx.HTTPError as exc:
        _fail(f"--server {server}: {exc}")
    if r.status_code >= 400:
        try:
            err = r.json()["error"]
            field = f" [{err['field']}]" if err.get("field") else ""
            message = f"{r.status_code} {err['code']}{field}: {err['message']}"
        except (ValueError, KeyError, TypeError):
            message = f"{r.status_code}: {r.text[:500]}"
        if r.status_code == 401:
            message += " (check --admin-key)"
        _fail(message)
    return r.json()


def _print_swap(swap: dict, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(swap, indent=2))
        return
    line = f"{swap['kind']} {swap['from_version']} -> {swap['to_version']}: {swap['status']}"
    if swap.get("signal"):
        line += f" (signal {swap['signal']})"
    if swap.get("monitor_until"):
        line += f"; monitored until {swap['monitor_until']}"
    typer.echo(line)


@models_app.command("list")
def list_cmd(server: ServerOpt = DEFAULT_SERVER, admin_key: KeyOpt = None,
             as_json: JsonOpt = False) -> None:
    """Every registered version: state, role on this server, gate verdict."""
    out = call(server, admin_key, "GET", "/admin/versions")
    if as_json:
        typer.echo(json.dumps(out, indent=2))
        return
    typer.echo(f"{'VERSION':<13} {'STATE':<12} {'ROLE':<9} {'SHARE':>6}  {'SHIP':<4} GATES")
    for v in out["versions"]:
        share = f"{v['fraction']:.2f}" if v["fraction"] is not None else "-"
        typer.echo(f"{v['version']:<13} {v['state']:<12} {v['role'] or '-':<9} {share:>6}  "
                   f"{'yes' if v['may_ship'] else 'no':<4} {v['gates']}")
    typer.echo(f"routing revision {out['revision']}")


@models_app.command("register")
def register_cmd(path: Annotated[Path, typer.Argument(help="Export directory (as the server "
                                                      "sees it).")],
                 server: ServerOpt = DEFAULT_SERVER, admin_key: KeyOpt = None,
                 actor: ActorOpt = None, reason: ReasonOpt = "", as_json: JsonOpt = False) -> None:
    """Register an export directory as a candidate version."""
    where = str(path.resolve()) if path.exists() else str(path)
    out = call(server, admin_key, "POST", "/admin/versions",
               {"path": where, "actor": _actor(actor), "reason": reason})
    if as_json:
        typer.echo(json.dumps(out, indent=2))
        return
    status = "registered" if out["created"] else "already registered"
    typer.echo(f"{status}: {out['version']} ({out['state']}); "
               f"{'may ship' if out['may_ship'] else 'may not ship'}: {out['gates']}")


def _traffic(slot: str, version: str, fraction: float, server: str, admin_key: str | None,
             actor: str | None, reason: str) -> None:
    out = call(server, admin_key, "POST", f"/admin/versions/{quote(version, safe='')}/{slot}",
               {"fraction": fraction, "actor": _actor(actor), "reason": reason})
    if out["fraction"] == 0:
        typer.echo(f"{slot} of {out['version']} ended (revision {out['revision']})")
    else:
        unit = "requests mirrored" if slot == "shadow" else "episodes served"
        typer.echo(f"{out['version']}: {out['fraction']:.0%} of {unit} "
                   f"(revision {out['revision']})")


FractionArg = Annotated[float, typer.Option(min=0.0, max=1.0, help="Share, 0..1 (0 ends it).")]


@models_app.command("shadow")
def shadow_cmd(version: Annotated[str, typer.Argument(help="Model version (12 hex digits).")],
               fraction: FractionArg, server: ServerOpt = DEFAULT_SERVER,
               admin_key: KeyOpt = None, actor: ActorOpt = None, reason: ReasonOpt = "") -> None:
    """Mirror a share of the active version's requests to VERSION (off the response path)."""
    _traffic("shadow", _version(version), fraction, server, admin_key, actor, reason)


@models_app.command("canary")
def canary_cmd(version: Annotated[str, typer.Argument(help="Model version (12 hex digits).")],
               fraction: FractionArg, server: ServerOpt = DEFAULT_SERVER,
               admin_key: KeyOpt = None, actor: ActorOpt = None, reason: ReasonOpt = "") -> None:
    """Serve a share of episodes (sticky per episode id) by VERSION; it must pass its gates."""
    _traffic("canary", _version(version), fraction, server, admin_key, actor, reason)


@models_app.command("promote")
def promote_cmd(version: Annotated[str, typer.Argument(help="Model version (12 hex digits).")],
                server: ServerOpt = DEFAULT_SERVER, admin_key: KeyOpt = None,
                actor: ActorOpt = None, reason: ReasonOpt = "", as_json: JsonOpt = False) -> None:
    """Warm-swap VERSION in (refused unless its gates passed or were overridden)."""
    version = quote(_version(version), safe="")
    out = call(server, admin_key, "POST", f"/admin/versions/{version}/promote",
               {"actor": _actor(actor), "reason": reason})
    _print_swap(out, as_json)


@models_app.command("rollback")
def rollback_cmd(to: Annotated[str | None, typer.Option(help="A version that was active before "
                                                        "(default: the previous one).")] = None,
                 server: ServerOpt = DEFAULT_SERVER, admin_key: KeyOpt = None,
                 actor: ActorOpt = None, reason: ReasonOpt = "", as_json: JsonOpt = False) -> None:
    """Return to the previous version at once."""
    out = call(server, admin_key, "POST", "/admin/rollback",
               {"actor": _actor(actor), "reason": reason,
                "to": _version(to, "--to") if to is not None else None})
    _print_swap(out, as_json)


@models_app.command("status")
def status_cmd(server: ServerOpt = DEFAULT_SERVER, admin_key: KeyOpt = None) -> None:
    """This server's routes and the post-swap monitor's signals (JSON)."""
    typer.echo(json.dumps(call(server, admin_key, "GET", "/admin/router"), indent=2))
