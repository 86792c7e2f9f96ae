"""djpoolapp: database connection pooling for Django from INSTALLED_APPS alone.

Add ``"djpoolapp"`` to ``INSTALLED_APPS``; every PostgreSQL and MySQL/MariaDB
alias then takes its connections from a SQLAlchemy pool, and Django's
``close()`` returns them.  See README.rst.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

#: PEP 440: 0.2.0 is not released yet (CHANGELOG.rst), so a development
#: release of it; "0.2.0" when it is.
__version__ = "0.2.0.dev0"
__all__ = [
    "PoolStatus",
    "PoolTimeout",
    "SessionValueLost",
    "__version__",
    "dispose",
    "pool_status",
]

if TYPE_CHECKING:
    from .exceptions import PoolTimeout, SessionValueLost
    from .status import PoolStatus, dispose, pool_status


def __getattr__(name: str) -> Any:
    # Lazy, so that importing djpoolapp (e.g. for __version__) needs no settings.
    if name in ("pool_status", "dispose", "PoolStatus"):
        from . import status

        return getattr(status, name)
    if name in ("PoolTimeout", "SessionValueLost"):
        from . import exceptions

        return getattr(exceptions, name)
    raise AttributeError(f"module 'djpoolapp' has no attribute {name!r}")
