"""Core's subcommands of the ``chargeghar`` command line (entry-point group ``chargeghar.commands``).

- ``chargeghar create-admin --email E [--password P] [--role admin|staff]``
- ``chargeghar create-service-account --email E [--password P]`` (the ingest's login)
- ``chargeghar core-migrate [--revision head]``
- ``chargeghar core-serve [--host H] [--port N] [--workers N] [--migrate]``

Without ``--password`` the password is read from ``CHARGEGHAR_PASSWORD`` or prompted for.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
from typing import Any

from chargeghar_core.auth.models import Role


def register(subparsers: Any) -> None:
    admin = subparsers.add_parser("create-admin", help="Create a staff account (role admin by default)")
    admin.add_argument("--email", required=True)
    admin.add_argument("--password")
    admin.add_argument("--full-name", default="")
    admin.add_argument("--role", choices=[Role.ADMIN.value, Role.STAFF.value], default=Role.ADMIN.value)
    admin.set_defaults(func=_create_admin)

    service = subparsers.add_parser("create-service-account", help="Create a service account (the ingest's)")
    service.add_argument("--email", required=True)
    service.add_argument("--password")
    service.add_argument("--full-name", default="ingest service")
    service.set_defaults(func=_create_service_account)

    migrate = subparsers.add_parser("core-migrate", help="Migrate core's database (alembic upgrade)")
    migrate.add_argument("--revision", default="head")
    migrate.set_defaults(func=_migrate)

    serve = subparsers.add_parser("core-serve", help="Run the core API under uvicorn")
    from chargeghar_core.__main__ import add_serve_arguments

    add_serve_arguments(serve)
    serve.set_defaults(func=_serve)


def _password(args: argparse.Namespace) -> str:
    if args.password:
        return str(args.password)
    from_env = os.environ.get("CHARGEGHAR_PASSWORD")
    if from_env:
        return from_env
    return getpass.getpass("Password: ")


def _create_admin(args: argparse.Namespace) -> int:
    return _create_account(args, Role(args.role))


def _create_service_account(args: argparse.Namespace) -> int:
    return _create_account(args, Role.SERVICE)


def _create_account(args: argparse.Namespace, role: Role) -> int:
    from chargeghar_core.auth.accounts import create_account
    from chargeghar_core.kit.errors import CoreError
    from chargeghar_core.settings import get_settings

    password = _password(args)
    if len(password) < 8:
        print("The password must have at least 8 characters", file=sys.stderr)
        return 2
    try:
        user_id = asyncio.run(create_account(get_settings(), args.email, password, role, args.full_name))
    except CoreError as exc:
        print(exc.message, file=sys.stderr)
        return 1
    print(f"created {role.value} account {args.email} ({user_id})")
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from chargeghar_core.__main__ import run_migrations

    return run_migrations(args)


def _serve(args: argparse.Namespace) -> int:
    from chargeghar_core.__main__ import serve

    return serve(args)
