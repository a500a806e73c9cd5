"""What a wheel ships: every folder of the package is a package, its data files included."""

from __future__ import annotations

import gzip
import importlib.resources
from pathlib import Path

from setuptools.config.setupcfg import read_configuration

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "flask_apiguard"


# flask_apiguard/data (data files, no __init__.py) was absent from `packages`: setuptools
# warned at every install that it would be ignored.
def test_every_folder_of_the_package_is_a_listed_package() -> None:
    options = read_configuration(ROOT / "setup.cfg")["options"]
    folders = {
        ".".join(folder.relative_to(ROOT).parts)
        for folder in (PACKAGE, *PACKAGE.rglob("*"))
        if folder.is_dir() and "__pycache__" not in folder.parts
    }
    assert folders == set(options["packages"])
    assert options["package_data"]["flask_apiguard.data"] == ["*.txt.gz", "NOTICE"]


def test_the_password_blocklist_resolves_as_package_data() -> None:
    data = importlib.resources.files("flask_apiguard.data")
    with data.joinpath("common-passwords.txt.gz").open("rb") as raw:
        assert b"password" in gzip.decompress(raw.read()).splitlines()[:1000]
    assert data.joinpath("NOTICE").is_file()
