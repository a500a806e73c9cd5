"""One small module per concern. A layer imports ``config``, ``errors``, ``identity``,
``storage`` and its one third-party library, never another layer; only the pipeline in
:mod:`flask_apiguard.extension` knows their order. What two layers hand each other through
the pipeline is defined here."""

from __future__ import annotations

import enum


class Body(enum.Enum):
    """A request without a body, as step 10's body check hands it to ``@validate``: not a
    JSON document (``None`` is one: the body ``null``)."""

    NONE = "no body"


#: The request has no body (or one that is not JSON, such as a form).
NO_BODY = Body.NONE
