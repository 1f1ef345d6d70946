import logging
from collections.abc import Iterator
from contextlib import contextmanager

from alembic import context
from flask import current_app

from creditapp.database import longer_statements

# this is the Alembic Config object, which provides
# access to the values within the .ini file in use.
config = context.config

# The app's JSON logging stays (alembic.ini's text handler would replace it, and disable every
# logger made before): each step of an upgrade is one line at INFO.
for name in ("alembic", "flask_migrate"):
    logging.getLogger(name).setLevel(logging.INFO)
logger = logging.getLogger("alembic.env")


def get_engine():
    return current_app.extensions["migrate"].db.engine


def get_engine_url():
    try:
        return get_engine().url.render_as_string(hide_password=False).replace("%", "%%")
    except AttributeError:
        return str(get_engine().url).replace("%", "%%")


# add your model's MetaData object here
# for 'autogenerate' support
# from myapp import mymodel
# target_metadata = mymodel.Base.metadata
config.set_main_option("sqlalchemy.url", get_engine_url())
target_db = current_app.extensions["migrate"].db

# other values from the config, defined by the needs of env.py,
# can be acquired:
# my_important_option = config.get_main_option("my_important_option")
# ... etc.


def get_metadata():
    if hasattr(target_db, "metadatas"):
        return target_db.metadatas[None]
    return target_db.metadata


def run_migrations_offline():
    """Run migrations in 'offline' mode.

    This configures the context with just a URL
    and not an Engine, though an Engine is acceptable
    here as well.  By skipping the Engine creation
    we don't even need a DBAPI to be available.

    Calls to context.execute() here emit the given string to the
    script output.

    """
    url = config.get_main_option("sqlalchemy.url")
    context.configure(url=url, target_metadata=get_metadata(), literal_binds=True)

    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online():
    """Run migrations in 'online' mode.

    In this scenario we need to create an Engine
    and associate a connection with the context.

    """

    # this callback is used to prevent an auto-migration from being generated
    # when there are no changes to the schema
    # reference: http://alembic.zzzcomputing.com/en/latest/cookbook.html
    def process_revision_directives(context, revision, directives):
        if getattr(config.cmd_opts, "autogenerate", False):
            script = directives[0]
            if script.upgrade_ops.is_empty():
                directives[:] = []
                logger.info("No changes in schema detected.")

    conf_args = current_app.extensions["migrate"].configure_args
    if conf_args.get("process_revision_directives") is None:
        conf_args["process_revision_directives"] = process_revision_directives

    connectable = get_engine()

    # A migration may rewrite a large table: no statement timeout (the lock timeout stays, so
    # that a migration waiting for a busy table fails instead of queueing every request
    # behind it; run it again).
    with (
        longer_statements(0),
        connectable.connect() as connection,
        sqlite_foreign_keys_off(connection) as after_each_migration,
    ):
        on_version_apply = [*conf_args.get("on_version_apply", ()), *after_each_migration]
        context.configure(
            connection=connection,
            target_metadata=get_metadata(),
            **{**conf_args, "on_version_apply": on_version_apply},
        )

        with context.begin_transaction():
            context.run_migrations()


@contextmanager
def sqlite_foreign_keys_off(connection) -> Iterator[list]:
    """On SQLite, run the migrations with foreign keys off, and check them before each commit.

    A batch operation (`op.batch_alter_table`) copies a table, drops the original and renames
    the copy: with `PRAGMA foreign_keys=ON`, which the app sets on every connection, SQLite
    refuses to drop a table other rows point at (accounts: grants, holds, ledger entries...).
    Alembic's batch documentation has the pragma switched off for the migration. It cannot
    change inside a transaction, so it is switched before any begins; before each migration
    commits (SQLite runs each in its own transaction), `PRAGMA foreign_key_check` must find no
    row pointing at nothing, or the migration fails and is rolled back. The pragma is switched
    on again afterwards: the connection goes back to the app's pool.

    Yields the callbacks to run after each migration (none on other databases: PostgreSQL
    alters tables in place and checks every key itself)."""
    if connection.dialect.name != "sqlite":
        yield []
        return
    _set_sqlite_foreign_keys(connection, on=False)
    try:
        yield [_foreign_keys_hold]
    finally:
        # Alembic commits each migration that succeeded; a transaction still open holds a
        # failed migration's work (or only reads): undone, as the pragma needs none open.
        if connection.in_transaction():
            connection.rollback()
        _set_sqlite_foreign_keys(connection, on=True)


def _set_sqlite_foreign_keys(connection, *, on: bool) -> None:
    if connection.in_transaction():
        raise RuntimeError("PRAGMA foreign_keys cannot change inside a transaction")
    # Through the driver's own connection: the engine's "begin" hook would wrap a statement
    # sent through SQLAlchemy in BEGIN, where the pragma is silently a no-op.
    driver = connection.connection.driver_connection
    driver.execute(f"PRAGMA foreign_keys={'ON' if on else 'OFF'}")
    (state,) = driver.execute("PRAGMA foreign_keys").fetchone()
    if bool(state) is not on:
        raise RuntimeError(f"PRAGMA foreign_keys did not switch {'on' if on else 'off'}")


def _foreign_keys_hold(ctx, step, heads, run_args) -> None:
    """After a migration, in its transaction: every foreign key must still point at a row."""
    broken = ctx.connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if broken:
        shown = ", ".join(
            f"{table} rowid {rowid} -> {parent}" for table, rowid, parent, _fk in broken[:10]
        )
        source = ", ".join(step.source_revision_ids) or "base"
        destination = ", ".join(step.destination_revision_ids) or "base"
        raise RuntimeError(
            f"migration {source} -> {destination} leaves {len(broken)} row(s) whose foreign"
            f" key points at nothing ({shown}); it was rolled back"
        )


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
