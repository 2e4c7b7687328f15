"""``qnect account …``: bootstrap API accounts (staff, and end users linked to a subject).

The password comes from ``QNECT_ACCOUNT_PASSWORD`` or the first line of standard input, never
from the command line (argv is visible to every local user and lands in shell history), and
is never printed.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Annotated

import typer

from api.auth import hash_password
from api.tokens import LOGIN_INFO, Role, derive_key, login_index
from device_registry.postgres_accounts import AccountExists, PostgresAccounts
from qnect.settings import Settings

account_app = typer.Typer(help="API accounts.", no_args_is_help=True)
PASSWORD_ENV = "QNECT_ACCOUNT_PASSWORD"  # noqa: S105 - the variable's name, not a secret
MIN_PASSWORD_CHARS = 12


def _password() -> str:
    password = os.environ.get(PASSWORD_ENV)
    if password is None:
        password = sys.stdin.readline().rstrip("\n")
    if len(password) < MIN_PASSWORD_CHARS:
        typer.echo(f"refused: the password needs {MIN_PASSWORD_CHARS}+ characters", err=True)
        raise typer.Exit(2)
    return password


@account_app.command("create")
def account_create(
    username: Annotated[str, typer.Option(help="Login name (stored only as a keyed hash).")],
    role: Annotated[Role, typer.Option(help="user, support, operator, analyst or dpo.")],
    subject: Annotated[str | None, typer.Option(help="Data subject of a user account.")] = None,
    oidc_subject: Annotated[
        str | None, typer.Option(help='Link an external login: "<issuer> <sub>".')
    ] = None,
) -> None:
    """Create an account; the password is read from QNECT_ACCOUNT_PASSWORD or stdin."""
    if (role is Role.USER) != (subject is not None):
        typer.echo("refused: --subject is required for role user and only for it", err=True)
        raise typer.Exit(2)
    settings = Settings()  # type: ignore[call-arg]  # fields come from QNECT_* variables
    try:
        index = login_index(derive_key(settings.root_key(), LOGIN_INFO), username)
    except ValueError as exc:
        typer.echo(f"refused: {exc}", err=True)
        raise typer.Exit(2) from None
    accounts = PostgresAccounts(settings.database_url.get_secret_value())
    try:
        account_id = accounts.create(
            login_hash=index,
            password_hash=hash_password(_password()),
            role=role.value,
            subject_id=subject,
            oidc_subject=oidc_subject,
        )
    except ValueError as exc:
        typer.echo(f"refused: {exc}", err=True)
        raise typer.Exit(1) from None
    except AccountExists:
        typer.echo("refused: an account with this login, subject or OIDC subject exists", err=True)
        raise typer.Exit(1) from None
    typer.echo(json.dumps({"account_id": account_id, "role": role.value}))
