"""`python -m emigm` and the installed `emigm` command (pyproject.toml: `emigm.__main__:main`)."""
import sys

from emigm.cli.status import loading

_erase = loading()  # importing the CLI loads PyTorch: seconds with no output otherwise
from emigm.cli.main import main  # noqa: E402

_erase()

if __name__ == "__main__":
    sys.exit(main())
