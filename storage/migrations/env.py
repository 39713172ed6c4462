"""Alembic environment. Migrations run from code (storage.db.Database.upgrade) and from
`lancang db upgrade`; the metadata comes from every domain through lancang.models."""

from alembic import context

from lancang.models import metadata
from storage.db import make_engine, schema_filter

config = context.config


def run_migrations() -> None:
    url = config.get_main_option("sqlalchemy.url")
    engine = make_engine(url)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
            include_object=schema_filter(connection.dialect.name),
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run_migrations()
