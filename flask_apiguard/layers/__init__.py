"""One small module per concern. A layer imports ``config``, ``errors``, ``identity`` and its
one third-party library (``validation`` also the marshmallow fields of :mod:`flask_apiguard.fields`),
never another layer (nor the stores: :mod:`flask_apiguard.apikeys`,
:mod:`flask_apiguard.ratelimit`); only the pipeline in :mod:`flask_apiguard.extension` knows
their order. What two layers hand each other through the pipeline is defined here."""

from __future__ import annotations

import enum


class Body(enum.Enum):
    """A request without a body, as step 10's body check hands it to ``@validate``: not a
    JSON document (``None`` is one: the body ``null``)."""

    NONE = "no body"


#: The request has no body (or one that is not JSON, such as a form).
NO_BODY = Body.NONE
