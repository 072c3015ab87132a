"""eMIGM Explorer: `python app.py [--model NAME_OR_PATH ...] [--checkpoint X.pth --vae kl16.ckpt]
[--device auto|cpu|cuda] [--host H] [--port P] [--share]`; installed, the same command is `emigm-explorer`.

The launcher lives in `app/launch.py` so that an installed package carries it.
"""
import sys

from app.launch import main

if __name__ == "__main__":
    sys.exit(main())
