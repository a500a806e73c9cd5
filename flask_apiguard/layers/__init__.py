"""One small module per concern. A layer imports ``config``, ``errors``, ``identity``,
``storage`` and its one third-party library, never another layer; only the pipeline in
:mod:`flask_apiguard.extension` knows their order."""
