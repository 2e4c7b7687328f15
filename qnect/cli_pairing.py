"""``qnect pairing …``: pairing tokens for operators and demos.

The mobile app gets its tokens from the HTTP API once user authentication exists there; this
command is the operator's path (support pairing a device for a user) and the demo's.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated

import psycopg
import typer

from device_registry.pairing import MAX_TOKEN_TTL_S, PairingRefused
from device_registry.postgres_pairing import issue_token
from qnect.settings import Settings

pairing_app = typer.Typer(help="Pairing tokens.", no_args_is_help=True)


@pairing_app.command("token")
def pairing_token(
    subject: Annotated[str, typer.Option(help="The user who will own the device.")],
    household: Annotated[str, typer.Option(help="The user's household.")],
    ttl: Annotated[int, typer.Option(min=1, max=MAX_TOKEN_TTL_S, help="Seconds valid.")] = 600,
) -> None:
    """Issue a single-use pairing token (printed once, as JSON; only its hash is stored)."""
    settings = Settings()  # type: ignore[call-arg]  # fields come from QNECT_* variables
    with psycopg.connect(settings.database_url.get_secret_value(), autocommit=True) as conn:
        try:
            token = issue_token(conn, subject, household, now=datetime.now(UTC), ttl_s=ttl)
        except PairingRefused as exc:
            typer.echo(f"refused: {exc.reason.value}", err=True)
            raise typer.Exit(1) from None
    typer.echo(
        json.dumps(
            {
                "token": token.token,
                "household_id": token.household_id,
                "expires_at": token.expires_at.isoformat(),
            }
        )
    )
