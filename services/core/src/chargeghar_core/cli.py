"""Core's subcommands of the ``chargeghar`` command line (entry-point group ``chargeghar.commands``).

- ``chargeghar create-admin --email E [--password P] [--role admin|staff]``
- ``chargeghar create-service-account --email E [--password P]`` (the ingest's login)
- ``chargeghar set-account-status --email E --inactive|--active``: lock a staff member out (their console
  sessions and tokens stop working at the next request) or let them back in
- ``chargeghar core-migrate [--revision head]``
- ``chargeghar core-serve [--host H] [--port N] [--workers N] [--migrate]``
- ``chargeghar bootstrap-accounts [--migrate]``: the deployment's one-shot job; creates the admin and the
  ingest's service account from ``CHARGEGHAR_ADMIN_EMAIL`` / ``CHARGEGHAR_ADMIN_PASSWORD`` and
  ``CHARGEGHAR_SERVICE_EMAIL`` / ``CHARGEGHAR_SERVICE_PASSWORD``; safe to run again

Without ``--password`` the password is read from ``CHARGEGHAR_PASSWORD`` or prompted for.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
from typing import TYPE_CHECKING, Any

from chargeghar_core.auth.models import Role

if TYPE_CHECKING:
    from chargeghar_core.settings import Settings


def register(subparsers: Any) -> None:
    admin = subparsers.add_parser("create-admin", help="Create a staff account (role admin by default)")
    admin.add_argument("--email", required=True)
    admin.add_argument("--password")
    admin.add_argument("--full-name", default="")
    admin.add_argument(
        "--role", choices=[Role.ADMIN.value, Role.STAFF.value, Role.VIEWER.value], default=Role.ADMIN.value
    )
    admin.set_defaults(func=_create_admin)

    service = subparsers.add_parser("create-service-account", help="Create a service account (the ingest's)")
    service.add_argument("--email", required=True)
    service.add_argument("--password")
    service.add_argument("--full-name", default="ingest service")
    service.set_defaults(func=_create_service_account)

    status = subparsers.add_parser(
        "set-account-status", help="Deactivate (or reactivate) an account: it is refused at its next request"
    )
    status.add_argument("--email", required=True)
    which = status.add_mutually_exclusive_group(required=True)
    which.add_argument("--inactive", dest="active", action="store_false")
    which.add_argument("--active", dest="active", action="store_true")
    status.set_defaults(func=_set_account_status)

    migrate = subparsers.add_parser("core-migrate", help="Migrate core's database (alembic upgrade)")
    migrate.add_argument("--revision", default="head")
    migrate.set_defaults(func=_migrate)

    bootstrap = subparsers.add_parser(
        "bootstrap-accounts",
        help="Create the admin and the ingest's service account from the environment (idempotent)",
    )
    bootstrap.add_argument(
        "--migrate", action="store_true", help="Migrate first (the job may start before core has)"
    )
    bootstrap.set_defaults(func=_bootstrap_accounts)

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
    from sqlalchemy.exc import DBAPIError

    from chargeghar_core.auth.accounts import create_account
    from chargeghar_core.kit.errors import CoreError
    from chargeghar_core.settings import get_settings

    password = _password(args)
    if len(password) < 8:
        print("The password must have at least 8 characters", file=sys.stderr)
        return 2
    settings = get_settings()
    try:
        user_id = asyncio.run(create_account(settings, args.email, password, role, args.full_name))
    except CoreError as exc:
        print(exc.message, file=sys.stderr)
        return 1
    except DBAPIError as exc:
        # Usually a database nobody migrated yet ("no such table: users", "relation … does not exist").
        print(
            f"cannot write the account to {_safe_url(settings.db.url)}: {str(exc.orig).splitlines()[0]}\n"
            "Is this the right database (CORE_DB__URL), and is it migrated? "
            "Run `chargeghar core-migrate` (or `make migrate`) first; "
            "`make dev` migrates var/dev/core.sqlite3.",
            file=sys.stderr,
        )
        return 1
    print(f"created {role.value} account {args.email} ({user_id})")
    return 0


def _set_account_status(args: argparse.Namespace) -> int:
    from chargeghar_core.settings import get_settings

    settings = get_settings()
    changed = asyncio.run(_update_account_status(settings, str(args.email), bool(args.active)))
    if changed is None:
        print(f"no account {args.email}", file=sys.stderr)
        return 1
    print(f"{changed} account {args.email} is now {'active' if args.active else 'inactive'}")
    return 0


async def _update_account_status(settings: Settings, email: str, active: bool) -> str | None:
    """The account's role when found (and updated), else None."""
    from chargeghar_core.auth.repository import UserRepository
    from chargeghar_core.kit.db import create_engine, create_sessionmaker

    engine = create_engine(settings.db)
    try:
        async with create_sessionmaker(engine)() as session:
            user = await UserRepository(session).get_by_email(email.strip().lower())
            if user is None:
                return None
            user.is_active = active
            await session.commit()
            return str(user.role)
    finally:
        await engine.dispose()


# Values of the shipped env examples; an account must never be created with one of them.
_PLACEHOLDER_WORDS = ("replace", "placeholder", "example", "changeme", "change-me")


def _bootstrap_accounts(args: argparse.Namespace) -> int:
    from chargeghar_core.settings import get_settings

    settings = get_settings()
    wanted: list[tuple[Role, str, str]] = []
    for role, prefix in ((Role.ADMIN, "CHARGEGHAR_ADMIN"), (Role.SERVICE, "CHARGEGHAR_SERVICE")):
        email = os.environ.get(f"{prefix}_EMAIL", "").strip()
        password = os.environ.get(f"{prefix}_PASSWORD", "")
        if not email or not password:
            print(f"{prefix}_EMAIL and {prefix}_PASSWORD must be set", file=sys.stderr)
            return 2
        if len(password) < 12 or any(word in password.lower() for word in _PLACEHOLDER_WORDS):
            print(f"{prefix}_PASSWORD is a placeholder or shorter than 12 characters", file=sys.stderr)
            return 2
        wanted.append((role, email, password))
    if args.migrate:
        from chargeghar_core.__main__ import run_migrations

        run_migrations(argparse.Namespace(revision="head"))
    try:
        asyncio.run(_ensure_accounts(settings, wanted))
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    return 0


async def _ensure_accounts(settings: Settings, wanted: list[tuple[Role, str, str]]) -> None:
    from chargeghar_core.auth.repository import UserRepository
    from chargeghar_core.auth.service import AuthService
    from chargeghar_core.auth.tokens import TokenService, hash_password, verify_password
    from chargeghar_core.kit.db import create_engine, create_sessionmaker

    engine = create_engine(settings.db)
    try:
        async with create_sessionmaker(engine)() as session:
            users = UserRepository(session)
            service = AuthService(users, TokenService(settings.jwt))
            for role, email, password in wanted:
                existing = await users.get_by_email(email.lower())
                if existing is None:
                    full_name = "ingest service" if role is Role.SERVICE else "administrator"
                    await service.create_user(email=email, password=password, role=role, full_name=full_name)
                    print(f"created {role.value} account {email}")
                    continue
                if existing.role_enum is not role:
                    # Never promote or demote someone else's account behind the operator's back.
                    raise ValueError(f"{email} exists with role {existing.role}, not {role.value}")
                if role is Role.SERVICE and not await verify_password(existing.password_hash, password):
                    # The ingest logs in with the same variable: a rotated secret must reach the account.
                    existing.password_hash = hash_password(password)
                    print(f"updated the password of {role.value} account {email}")
                else:
                    print(f"{role.value} account {email} exists already")
            await session.commit()
    finally:
        await engine.dispose()


def _safe_url(url: str) -> str:
    """The database URL without its password, for messages."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _migrate(args: argparse.Namespace) -> int:
    from chargeghar_core.__main__ import run_migrations

    return run_migrations(args)


def _serve(args: argparse.Namespace) -> int:
    from chargeghar_core.__main__ import serve

    return serve(args)
