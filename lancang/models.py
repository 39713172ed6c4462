"""Imports every domain's models so that Alembic (and create_all in tooling) sees one metadata."""

import consult.models  # noqa: F401
import consult.room_models  # noqa: F401
import edge.models  # noqa: F401
import edge.worklist_models  # noqa: F401
import imaging.models  # noqa: F401
import film.models  # noqa: F401
import maternal.models  # noqa: F401
import storage.models  # noqa: F401
from storage.db import Base

metadata = Base.metadata
