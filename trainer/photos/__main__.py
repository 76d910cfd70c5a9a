"""``python -m inpaint.trainer.photos``: assemble the photos (see ``cli.py``)."""

from inpaint.trainer.photos.cli import main

main(prog_name="python -m inpaint.trainer.photos")
